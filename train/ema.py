"""Exponential moving average of a model's parameters (shadow = d·shadow + (1-d)·p)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Parameters only: the potentials' buffers are constants (E0, grids)."""
        shadows = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            shadows[name].mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)

    def shadow_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.module.named_parameters()}

    def state_dict(self) -> dict:
        return self.shadow_state()

    def load_state_dict(self, state: dict) -> None:
        shadows = dict(self.module.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                shadows[name].copy_(value)

    def model_state(self, model: nn.Module) -> dict:
        """``model``'s state_dict with the averaged parameter values (loadable anywhere)."""
        state = model.state_dict()
        state.update(self.shadow_state())
        return state
