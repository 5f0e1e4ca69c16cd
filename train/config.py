"""Typed training configuration (from a dict or the ``train:`` section of pipelines.yaml)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

from train.loader import LoaderConfig

CHOICES = {
    "loss": ("mse", "huber"),
    "optimizer": ("adam", "adamw"),
    "schedule": ("cosine", "plateau", "constant"),
    "precision": ("float64", "float32", "tf32", "bf16"),
}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimiser steps (overrides epochs)
    lr: float = 1e-3
    optimizer: str = "adam"
    amsgrad: bool = False  # the AMSGrad variant of Adam/AdamW (mace-torch's default)
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    min_lr: float = 1e-6
    ema_decay: float | None = 0.99
    grad_clip: float | None = 10.0
    precision: str = "float64"
    loss: str = "mse"
    huber_delta: float = 0.01  # in each term's unit: eV/atom, eV/Å, GPa
    # loss weights, on squared (or Huber) errors of: energy per atom in eV, force components
    # in eV/Å, stress components in GPa. In GPa (as CHGNet trains on MPtrj), a 1 GPa stress
    # error weighs as much as a 0.1 eV/Å force error; in eV/Å³ it would weigh 160² times
    # less and stress would go untrained.
    energy_weight: float = 1.0
    forces_weight: float = 10.0
    stress_weight: float = 0.1
    early_stopping_patience: int | None = None  # epochs without validation improvement
    checkpoint_every: int = 100  # steps
    log_every: int = 10  # steps
    seed: int = 0
    device: str = "cpu"
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    plots: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        for name, options in CHOICES.items():
            if getattr(self, name) not in options:
                raise ValueError(f"train.{name}: {getattr(self, name)!r} is not one of "
                                 f"{', '.join(options)}")
        if self.epochs < 1:
            raise ValueError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"train.max_steps must be >= 1, got {self.max_steps}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        for name in ("energy_weight", "forces_weight", "stress_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"train.ema_decay must be in (0, 1) or null, got {self.ema_decay}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> "TrainConfig":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"train: unknown keys {unknown}; known keys are {sorted(known)}")
        if "loader" in d and not isinstance(d["loader"], LoaderConfig):
            loader = dict(d["loader"] or {})
            lknown = {f.name for f in fields(LoaderConfig)}
            bad = sorted(set(loader) - lknown)
            if bad:
                raise ValueError(f"train.loader: unknown keys {bad}; known keys are {sorted(lknown)}")
            d["loader"] = LoaderConfig(**loader)
        return cls(**d)
