"""Exponential moving average of a model's parameters: shadow = d_t·shadow + (1 - d_t)·p.

The decay warms up, d_t = min(decay, (1 + t) / (10 + t)) at the t-th update, as torch_ema
(which mace-torch uses) does: with a fixed 0.99 the average of a short run is still 0.82
the initial weights after 20 steps, and its validation barely moves.

The averaging is torch's :class:`torch.optim.swa_utils.AveragedModel` with its EMA update
(:func:`torch.optim.swa_utils.get_ema_multi_avg_fn`, one fused lerp over all parameters)
given this step's warmed-up decay. AveragedModel copies the model at its first
``update_parameters`` call and averages from the second on; :class:`EMA` makes that first
call at construction, so the t-th :meth:`EMA.update` is AveragedModel's (t+1)-th and the
average starts from the initial weights. Parameters only: the potentials' buffers are
constants (E0, grids) and are copied from the model.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def warmup_decay(decay: float, t: int) -> float:
    """The decay of the t-th update (t = 1, 2, ...): min(decay, (1 + t) / (10 + t))."""
    return min(decay, (1.0 + t) / (10.0 + t))


class EMA:
    """The averaged copy of ``model`` (:attr:`module`) and its update count (:attr:`updates`).

    ``state_dict()`` is ``{"shadow": {name: tensor}, "updates": int}``: plain tensors and a
    number, loadable with ``torch.load(weights_only=True)``, and the format of checkpoints
    written before AveragedModel did the averaging."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {decay!r}")
        self.decay = float(decay)
        self.averaged = AveragedModel(model, multi_avg_fn=self._average)
        _align_buffers(self.averaged.module, model)
        for p in self.averaged.parameters():
            p.requires_grad_(False)
        self.averaged.update_parameters(model)  # the copy: the average starts from it

    def _average(self, averaged: list[torch.Tensor], current: list[torch.Tensor],
                 n_averaged: torch.Tensor) -> None:
        """AveragedModel's hook: ``n_averaged`` counts the initial copy, so it is t."""
        get_ema_multi_avg_fn(warmup_decay(self.decay, int(n_averaged)))(averaged, current,
                                                                        n_averaged)

    @property
    def module(self) -> nn.Module:
        """The model holding the averaged parameters (for validation and best.pt)."""
        return self.averaged.module

    @property
    def updates(self) -> int:
        """Updates made so far (the initial copy not counted)."""
        return int(self.averaged.n_averaged) - 1

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    def shadow_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.module.named_parameters()}

    def state_dict(self) -> dict:
        return {"shadow": self.shadow_state(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        shadows = dict(self.module.named_parameters())
        with torch.no_grad():
            for name, value in state["shadow"].items():
                shadows[name].copy_(value)
            self.averaged.n_averaged.fill_(int(state["updates"]) + 1)

    def model_state(self, model: nn.Module) -> dict:
        """``model``'s state_dict with the averaged parameter values (loadable anywhere)."""
        return averaged_state(model.state_dict(), self.state_dict())


def averaged_state(model_state: dict, ema_state: dict) -> dict:
    """A copy of ``model_state`` (a model's state_dict) with the averaged parameter values
    of ``ema_state`` (an :meth:`EMA.state_dict`, as a checkpoint holds it) in place of the
    raw ones; buffers are the model's."""
    return {**model_state, **ema_state["shadow"]}


def _align_buffers(copy: nn.Module, model: nn.Module) -> None:
    """Give ``copy`` (a deep copy of ``model``) exactly ``model``'s buffers, as AveragedModel
    pairs them by position when it copies them over at each update.

    A deep copy of an e3nn TensorProduct holds two more: torch.fx re-creates its compiled
    GraphModule and registers the code's tensor constants as buffers (the original holds
    them as plain attributes). They are turned back into attributes here (the code reads
    them as attributes either way); any other difference is an error."""
    names = {name for name, _ in model.named_buffers()}
    for prefix, module in copy.named_modules():
        for name in list(module._buffers):
            if (f"{prefix}.{name}" if prefix else name) not in names:
                object.__setattr__(module, name, module._buffers.pop(name))
    ours = [name for name, _ in copy.named_buffers()]
    theirs = [name for name, _ in model.named_buffers()]
    if ours != theirs:
        raise RuntimeError(f"EMA: the averaged copy's buffers differ from the model's "
                           f"({sorted(set(ours) ^ set(theirs))[:4]})")
