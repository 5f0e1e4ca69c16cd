"""Exponential moving average of a model's parameters: shadow = d_t·shadow + (1 - d_t)·p.

The decay warms up, d_t = min(decay, (1 + t) / (10 + t)) at the t-th update, as torch_ema
(which mace-torch uses) does: with a fixed 0.99 the average of a short run is still 0.82
the initial weights after 20 steps, and its validation barely moves.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        t = self.updates + 1
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Parameters only: the potentials' buffers are constants (E0, grids)."""
        decay = self.current_decay()
        shadows = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            shadows[name].mul_(decay).add_(p.detach(), alpha=1.0 - decay)
        self.updates += 1

    def shadow_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.module.named_parameters()}

    def state_dict(self) -> dict:
        return {"shadow": self.shadow_state(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        shadows = dict(self.module.named_parameters())
        with torch.no_grad():
            for name, value in state["shadow"].items():
                shadows[name].copy_(value)
        self.updates = int(state["updates"])

    def model_state(self, model: nn.Module) -> dict:
        """``model``'s state_dict with the averaged parameter values (loadable anywhere)."""
        state = model.state_dict()
        state.update(self.shadow_state())
        return state
