"""Typed training and evaluation configuration (from a dict, the ``train:`` section of
pipelines.yaml or ``orbitgraph train --config``), and the configuration reference
(docs/reference/configuration.md) generated from every declaration (:func:`reference_markdown`)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from orbitgraph.config import Config
from orbitgraph.train.loader_config import Device, LoaderConfig

CHOICES = {
    "loss": ("mse", "huber", "universal"),  # orbitgraph.train.metrics
    "optimizer": ("adam", "adamw"),
    "schedule": ("cosine", "plateau", "constant"),
    "precision": ("float64", "float32", "tf32", "bf16"),
}
SPLITS = ("train", "val", "test")


class StageTwo(Config):
    """mace-torch's SWA stage (``--swa``, later ``--stage_two``): the last part of the budget
    trains at its own constant learning rate on a loss whose energy term is raised, and the
    EMA's averaged weights (``ema_decay``) are the model it yields. best.pt is chosen among
    this stage's validations (its criterion uses these weights). The weights are absolute,
    not factors of the run's own; the defaults are mace-torch's (energy 1000, forces 100,
    stress 10 per (eV/Å³)², i.e. 0.00039 per GPa²: against a run's larger stress weight
    that all but drops the stress term, so set it beside your own)."""

    section = "train.stage_two"

    start: float = Field(0.75, gt=0, lt=1, description="fraction of the step budget after "
                         "which stage two begins (mace-torch: 75 % of the epochs)")
    lr: float = Field(1e-3, gt=0, description="the stage's constant learning rate "
                      "(mace-torch's swa_lr)")
    energy_weight: float = Field(1000.0, ge=0, description="on energy per atom errors, eV")
    forces_weight: float = Field(100.0, ge=0, description="on force component errors, eV/Å")
    stress_weight: float = Field(10.0 / 160.21766208 ** 2, ge=0, description="on stress "
                                 "component errors, GPa (mace-torch's 10 per (eV/Å³)²)")


class TrainConfig(Config):
    """How a model is trained: budget, optimiser, schedule, losses, logging, device, loader."""

    section = "train"

    epochs: int = Field(10, ge=1, description="train to this many epochs")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser "
                                  "steps (overrides epochs)")
    lr: float = Field(1e-2, gt=0, description="learning rate (peak, after warmup; "
                      "MACE-MP's)")
    optimizer: Literal[CHOICES["optimizer"]] = Field("adam", description="Adam or AdamW")
    amsgrad: bool = Field(False, description="the AMSGrad variant of Adam/AdamW (mace-torch's "
                          "default)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW's decoupled (Adam's L2) weight "
                                "decay")
    schedule: Literal[CHOICES["schedule"]] = Field("cosine", description="learning-rate "
                                                   "schedule after warmup")
    warmup_steps: int = Field(10, ge=0, description="steps of linear warmup")
    plateau_patience: int = Field(3, ge=0, description="plateau: epochs without validation "
                                  "improvement before the rate drops")
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="plateau: factor of each drop")
    min_lr: float = Field(1e-6, ge=0, description="floor of the schedules")
    ema_decay: float | None = Field(0.99, gt=0, lt=1, description="exponential moving "
                                    "average of the weights (warmed up; null: none)")
    grad_clip: float | None = Field(10.0, gt=0, description="gradient norm clip (null: none)")
    precision: Literal[CHOICES["precision"]] = Field("float64", description="float64, "
                                                     "float32, tf32 (TF32 matmuls) or bf16 "
                                                     "(autocast)")
    loss: Literal[CHOICES["loss"]] = Field(
        "universal", description="per component: mse (squared error), huber (Huber's loss with "
        "huber_delta in each term's unit) or universal (mace-torch's MACE-MP loss: huber, "
        "except that a force component's delta is huber_delta × 1, 0.7, 0.4 or 0.1 where its "
        "atom's reference |F| is < 100, < 200, < 300 or >= 300 eV/Å, and the stress delta is "
        "huber_delta eV/Å³, i.e. 160.2 × huber_delta GPa)")
    huber_delta: float = Field(0.01, gt=0, description="huber and universal: where the loss "
                               "turns from quadratic to linear: eV/atom, eV/Å and GPa (huber) "
                               "or eV/Å³ (universal's stress)")
    # loss weights, on squared (or Huber) errors of: energy per atom in eV, force components
    # in eV/Å, stress components in GPa. In GPa (as CHGNet trains on MPtrj), a 1 GPa stress
    # error weighs as much as a 0.1 eV/Å force error; in eV/Å³ it would weigh 160² times
    # less and stress would go untrained.
    energy_weight: float = Field(1.0, ge=0, description="on energy per atom errors, eV")
    forces_weight: float = Field(10.0, ge=0, description="on force component errors, eV/Å")
    stress_weight: float = Field(0.004, ge=0, description="on stress component errors, GPa "
                                 "(MACE-MP's 100 per (eV/Å³)², ÷ 160.2²)")
    stage_two: StageTwo | None = Field(None, description="a final stage at a constant rate "
                                       "with a raised energy weight (null: none)")
    early_stopping_patience: int | None = Field(None, ge=1, description="epochs without "
                                                "validation improvement (null: never stop)")
    checkpoint_every: int = Field(100, ge=1, description="steps between checkpoints")
    log_every: int = Field(10, ge=1, description="steps between log lines")
    seed: int = Field(0, ge=0, description="seed of the weights and of torch, numpy, random")
    device: Device = Field("cpu", description="where to train")
    loader: LoaderConfig = Field(default_factory=LoaderConfig)
    plots: bool = Field(True, description="loss curves and parity plots in the run directory")
    tensorboard: bool = Field(True, description="TensorBoard logs in the run directory")


class EvaluateConfig(Config):
    """What ``orbitgraph evaluate`` and an experiment's ``evaluate:`` measure."""

    section = "evaluate"

    split: Literal[SPLITS] = Field("test", description="the store's split to evaluate on")
    device: Device | None = Field(None, description="null: the training device (pipelines), "
                                  "cpu (orbitgraph evaluate)")
