"""The learning-rate schedules (train.schedule): every step's rate is the documented formula,
exactly, for warmup + cosine, warmup + plateau and constant; a schedule restored from a
checkpoint continues bit for bit, and one given another budget re-plans its cosine. Fast:
one parameter, no model."""
from __future__ import annotations

import math

import pytest
import torch

from orbitgraph.model.checkpoint import read_checkpoint, write_checkpoint
from orbitgraph.train.config import TrainConfig
from orbitgraph.train.schedule import Schedule

LR, MIN_LR = 1e-2, 1.5e-3


def formula(step: int, kind: str, warmup: int, total: int, plateau_factor: float = 1.0,
            lr: float = LR, min_lr: float = MIN_LR) -> float:
    """lr(s) = max(min_lr, lr · w(s) · c(s) · p), as the trainer has always computed it."""
    f = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if kind == "cosine" and total > 0:
        f *= 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / total)))
    return max(min_lr, lr * f * plateau_factor)


def schedule(kind: str, warmup: int, total: int, patience: int = 1,
             factor: float = 0.5) -> Schedule:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=LR)
    return Schedule(optimizer, kind, warmup, total, patience, factor, MIN_LR)


def rates(sched: Schedule, steps: int, epoch_steps: int = 0, val_losses=()) -> list[float]:
    """The rate each of ``steps`` optimiser steps takes (read from the optimiser), with the
    validation criterion ``val_losses[i]`` given after every ``epoch_steps`` steps."""
    taken, val_losses = [], list(val_losses)
    for step in range(steps):
        taken.append(sched.optimizer.param_groups[0]["lr"])
        assert sched.lr == taken[-1]  # what the trainer logs is what the step takes
        sched.optimizer.step()
        sched.step()
        if epoch_steps and (step + 1) % epoch_steps == 0 and val_losses:
            sched.epoch_end(val_losses.pop(0))
    return taken


@pytest.mark.parametrize("warmup", [0, 7])
def test_cosine_with_warmup_is_the_formula_at_every_step(warmup):
    total = 40
    # past the budget too: the cosine stays at its end (the floor)
    assert rates(schedule("cosine", warmup, total), 50) == [
        formula(s, "cosine", warmup, total) for s in range(50)]


@pytest.mark.parametrize("warmup", [0, 5])
def test_constant_is_the_formula_at_every_step(warmup):
    assert rates(schedule("constant", warmup, 30), 30) == [
        formula(s, "constant", warmup, 30) for s in range(30)]


def test_plateau_with_warmup_drops_after_patience_and_stops_at_the_floor():
    """Epochs of 4 steps, patience 1: an epoch that improves the best by 1e-12 or less does
    not count as an improvement; the second such epoch in a row halves the rate (the first
    drop comes during the warmup), and the floor holds it at min_lr."""
    val = [1.0, 0.9, 0.9 - 1e-13, 0.95,   # two epochs without improvement: drop to 1/2
           0.5, 0.6, 0.6,                  # drop to 1/4
           0.4, 0.7, 0.8,                  # drop to 1/8 (the floor: 1.25e-3 < 1.5e-3)
           0.8, 0.8]                       # 1/16, still the floor
    factors = [1.0] * 4 + [0.5] * 3 + [0.25] * 3 + [0.125] * 2 + [0.0625]
    expected = [formula(s, "plateau", 20, 52, factors[s // 4]) for s in range(52)]
    assert rates(schedule("plateau", 20, 52), 52, epoch_steps=4, val_losses=val) == expected
    assert expected[16] < expected[15]  # the drop, while the warmup still raises the rate
    assert expected[-1] == MIN_LR


def test_other_schedules_ignore_the_validation_criterion():
    for kind in ("cosine", "constant"):
        taken = rates(schedule(kind, 3, 20, patience=0), 20, epoch_steps=2,
                      val_losses=[1.0 + i for i in range(10)])  # never improves
        assert taken == [formula(s, kind, 3, 20) for s in range(20)]


def test_from_the_train_config():
    cfg = TrainConfig(lr=LR, min_lr=MIN_LR, schedule="cosine", warmup_steps=4)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=cfg.lr)
    assert rates(Schedule.for_run(optimizer, cfg, 25), 25) == [
        formula(s, "cosine", 4, 25) for s in range(25)]


@pytest.mark.parametrize("kind", ["cosine", "plateau", "constant"])
def test_a_restored_schedule_continues_bit_for_bit(kind, tmp_path):
    """Stopped after 13 steps and 3 epochs (a plateau drop behind it), saved through the
    checkpoint writer (plain data, weights_only), restored into a new optimiser: the next
    steps take the uninterrupted schedule's rates, and so do the plateau drops after."""
    val = [1.0, 1.0, 1.0, 0.5, 0.6, 0.7, 0.8, 0.9]
    straight = rates(schedule(kind, 5, 32), 32, epoch_steps=4, val_losses=val)
    first = schedule(kind, 5, 32)
    rates(first, 12, epoch_steps=4, val_losses=val[:3])
    write_checkpoint({"schedule": first.state_dict(),
                      "optimizer": first.optimizer.state_dict()}, tmp_path / "ckpt.pt")
    saved = read_checkpoint(tmp_path / "ckpt.pt")
    second = schedule(kind, 5, 32)
    second.optimizer.load_state_dict(saved["optimizer"])
    second.load_state_dict(saved["schedule"])
    assert rates(second, 20, epoch_steps=4, val_losses=val[3:]) == straight[12:]
    if kind == "plateau":
        assert straight[12] == formula(12, kind, 5, 32, 0.5)  # the drop came along


def test_a_continued_run_with_another_budget_re_plans_its_cosine():
    """A run of 20 steps continued with a budget of 60: from step 20 on, the cosine of 60
    steps (its warmup long over), not the end of the first one."""
    first = schedule("cosine", 5, 20)
    assert rates(first, 20)[-1] == formula(19, "cosine", 5, 20)
    longer = schedule("cosine", 5, 60)
    longer.load_state_dict(first.state_dict())
    assert rates(longer, 40) == [formula(s, "cosine", 5, 60) for s in range(20, 60)]


def test_stage_two_takes_its_constant_rate_from_its_first_step_and_stops_plateau_drops():
    from orbitgraph.train.schedule import stage_two_start

    assert stage_two_start(0.75, 100) == 75
    assert stage_two_start(0.001, 100) == 1 and stage_two_start(0.999, 100) == 99
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = Schedule(opt, "plateau", 2, 10, patience=0, factor=0.5, min_lr=1e-6,
                     stage_two=(6, 3e-4))
    got = []
    for _ in range(10):
        got.append(sched.lr)
        opt.step()
        sched.step()
        sched.epoch_end(1.0)  # never improves: a drop after every epoch, in stage one only
    assert got[6:] == [3e-4] * 4
    assert got[:6] == [0.005, 0.01, 0.005, 0.0025, 0.00125, 0.000625]
    assert sched.plateau_factor == 0.5 ** 5  # the drops counted in steps 1-5 only
