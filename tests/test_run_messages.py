"""A run that talks: its summary before the first step, train.log, the progress bar, a
checkpoint on SIGINT/SIGTERM that the same command resumes from exactly, the learning-rate
plan a new budget changes, and loss curves and epoch losses that agree with every step."""
from __future__ import annotations

import csv
import io
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import write_emt_extxyz, write_small_mptrj
from orbitgraph.model.checkpoint import read_checkpoint
from orbitgraph.preprocess.build import build_store
from orbitgraph.preprocess.cluster import ClusterConfig
from orbitgraph.preprocess.store import SplitParams, open_store
from orbitgraph.train import plots
from orbitgraph.train.callbacks import STEP_LOSSES, Callback
from orbitgraph.train.checkpointing import CHECKPOINT
from orbitgraph.train.cli import main
from orbitgraph.train.config import TrainConfig
from orbitgraph.train.interrupts import Interrupted
from orbitgraph.train.run_log import TRAIN_LOG
from orbitgraph.train.schedule import Schedule
from orbitgraph.train.trainer import Trainer

TINY = {"preset": "invariant", "hidden": 8, "species_dim": 4, "final_mlp": [8], "layers": 1,
        "num_radial": 8}
QUIET = dict(checkpoint_every=10_000, plots=False, tensorboard=False,
             loader={"max_atoms": 60, "seed": 1})


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("talk")
    build_store(write_small_mptrj(root / "small.json"), root / "store", frames_per_shard=6,
                cluster=ClusterConfig(kind="synchronous"), progress=False,
                split=SplitParams(0.15, 0.15, 0))
    return root / "store"


def _train_args(store_path: Path, tmp_path: Path, out: str, *more: str) -> list[str]:
    model = tmp_path / "tiny.yaml"
    model.write_text(yaml.safe_dump(TINY))
    return ["train", "--store", str(store_path), "--model", str(model), "--out",
            str(tmp_path / out), "--set", "train.tensorboard=false", *more]


def _identical(a, b) -> bool:
    """Whether ``a`` and ``b`` (state_dicts: nested dicts, lists, tensors, numbers) are equal,
    tensors bit for bit and of the same dtype, NaN equal to NaN (the metrics of a run
    without validation frames)."""
    if isinstance(a, dict):
        return (isinstance(b, dict) and a.keys() == b.keys()
                and all(_identical(a[k], b[k]) for k in a))
    if isinstance(a, (list, tuple)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(_identical(x, y) for x, y in zip(a, b, strict=True)))
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
                and torch.equal(a.isnan(), b.isnan()))
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    return a == b


def _step_losses(run: Path) -> list[tuple[int, float]]:
    with open(run / STEP_LOSSES, newline="") as f:
        return [(int(row["step"]), float(row["loss"])) for row in csv.DictReader(f)]


# ------------------------------------------------------------ 4: what a run says

def test_a_run_opens_with_its_summary_and_says_everything_in_train_log_too(store_path,
                                                                          tmp_path, capsys):
    """Before the first step: parameters, store id, frames and atoms per split, steps per
    epoch and in all, the E0s' source and range, device, dtype, threads, budget. Every line
    on stderr is in train.log too, and a second call appends to it."""
    args = _train_args(store_path, tmp_path, "run", "--set", "train.log_every=1", "--set",
                       "train.plots=false")
    assert main([*args, "--max-steps", "2"]) == 0
    err = capsys.readouterr().err.splitlines()
    store = open_store(store_path)
    train, val, test = (store.subset(split=s) for s in ("train", "val", "test"))
    atoms = {name: int(s.index.column("n_atoms").to_numpy().sum())
             for name, s in (("train", train), ("val", val), ("test", test))}
    trainer = Trainer(store_path, TINY, TrainConfig(max_steps=2), tmp_path / "x")
    params = sum(p.numel() for p in trainer.model.parameters())
    expected = [
        f"model: invariant, {params:,} parameters, float64 on cpu, "
        f"{torch.get_num_threads()} CPU threads",
        f"store {store.manifest.store_id} ({store_path}): train {len(train)} frames "
        f"({atoms['train']:,} atoms), val {len(val)} frames ({atoms['val']:,} atoms), test "
        f"{len(test)} frames ({atoms['test']:,} atoms)",
        f"budget: 2 steps, {trainer.steps_per_epoch} steps per epoch (batches of up to 1024 "
        "atoms and 20480 edges); checkpoint every 100 steps, log every 1"]
    assert [line for line in err if line in expected] == expected, err
    e0 = trainer.model.config.atomic_energies
    e0_line = [line for line in err if line.startswith("E0s (regularised): ")]
    assert e0_line == [f"E0s (regularised): {len(e0)} elements, {min(e0.values()):.4g} to "
                       f"{max(e0.values()):.4g} eV"], err
    first_step = next(i for i, line in enumerate(err) if line.startswith("epoch 0 step 1 "))
    assert err.index(expected[-1]) < first_step
    logged = (tmp_path / "run" / TRAIN_LOG).read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in logged] == err  # each with its UTC time
    assert all(line[:20].endswith("Z") for line in logged)
    assert main([*args, "--max-steps", "3", "--quiet"]) == 0  # appended, complete under --quiet
    again = (tmp_path / "run" / TRAIN_LOG).read_text().splitlines()
    assert again[:len(logged)] == logged
    assert any("resuming at step 2" in line for line in again[len(logged):])
    assert any(" step 3 loss " in line for line in again[len(logged):])


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_bar_shows_the_steps_and_their_lines_go_to_train_log(
        store_path, tmp_path, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(_train_args(store_path, tmp_path, "run", "--max-steps", "3", "--set",
                            "train.log_every=1", "--set", "train.plots=false")) == 0
    shown = terminal.getvalue()
    assert "training: 100%" in shown and "3/3" in shown and "loss " in shown, shown
    assert ("s/step" in shown or "step/s" in shown) and "<" in shown  # rate and time left
    assert " step 2 loss" not in shown  # the bar says it
    assert "budget: 3 steps" in shown  # the other lines print above the bar
    assert " step 2 loss" in (tmp_path / "run" / TRAIN_LOG).read_text()


# ------------------------------------------------------------ 5: signals

class SignalAt(Callback):
    """Sends ``signum`` to this process when step ``step`` is done."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_step_end(self, trainer, step, loss):
        if step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_checkpoints_the_step_and_the_resumed_run_is_the_uninterrupted_one(
        store_path, tmp_path, caplog, signum):
    cfg = TrainConfig(max_steps=5, lr=3e-3, ema_decay=0.9, log_every=10_000, **QUIET)
    before = signal.getsignal(signum)
    trainer = Trainer(store_path, TINY, cfg, tmp_path / "stopped", callbacks=[SignalAt(2, signum)])
    with pytest.raises(Interrupted) as stopped:
        trainer.fit()
    assert signal.getsignal(signum) is before  # the handler lived as long as fit()
    assert (stopped.value.step, stopped.value.exit_status) == (2, 128 + signum)
    assert read_checkpoint(tmp_path / "stopped" / CHECKPOINT)["state"]["step"] == 2
    name = signal.Signals(signum).name
    heard = f"{name}: stopping after the step in progress, with a checkpoint of it"
    assert [m for m in caplog.messages if m.startswith(heard)], caplog.messages
    assert (f"{name}: stopped after step 2 (epoch 0, batch 2); "
            f"{tmp_path / 'stopped' / CHECKPOINT} holds it, and the same command resumes "
            "from step 2") in caplog.messages
    Trainer(store_path, TINY, cfg, tmp_path / "stopped").fit()
    Trainer(store_path, TINY, cfg, tmp_path / "straight").fit()
    resumed, straight = (read_checkpoint(tmp_path / d / CHECKPOINT)
                         for d in ("stopped", "straight"))
    for key in ("model_state", "ema_state", "optimizer"):
        assert _identical(resumed[key], straight[key]), key
    assert resumed["state"] == straight["state"]
    assert _step_losses(tmp_path / "stopped") == _step_losses(tmp_path / "straight")


@pytest.mark.slow
def test_sigterm_to_orbitgraph_train_from_a_mace_torch_config_and_the_same_command_resumes(
        tmp_path):
    """The whole path as a SLURM job meets it: ``orbitgraph train --config mace.yaml`` as a
    process, SIGTERM once a step is done: exit 143, the message, the checkpoint of that
    step; the same command again finishes the run, equal in float64, bit for bit, to a run
    never interrupted."""
    write_emt_extxyz(tmp_path / "train.extxyz")
    config = {"work_dir": "runs", "model": "MACE", "train_file": "train.extxyz",
              "valid_fraction": 0.0, "r_max": 4.0, "num_channels": 4, "max_L": 0,
              "max_ell": 1, "correlation": 2, "num_interactions": 1, "MLP_irreps": "4x0e",
              "radial_MLP": "[8]", "E0s": "{13: -0.5, 29: -1.0}", "batch_size": 2,
              "max_num_epochs": 12, "default_dtype": "float64", "plot": False}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    argv = ["--set", "build.split.test_fraction=0", "--set", "train.tensorboard=false"]

    def command(name: str) -> list[str]:
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, **config}))
        return [sys.executable, "-m", "orbitgraph.train.cli", "train", "--config",
                f"{name}.yaml", *argv]

    def run(name: str) -> subprocess.CompletedProcess:
        return subprocess.run(command(name), cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)

    straight = run("straight")
    assert straight.returncode == 0, straight.stderr
    steps = len(_step_losses(tmp_path / "runs" / "straight"))
    process = subprocess.Popen(command("stopped"), cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    losses = tmp_path / "runs" / "stopped" / STEP_LOSSES
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if losses.is_file() and len(losses.read_text().splitlines()) > 1:  # a step is done
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.01)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, err
    step = read_checkpoint(tmp_path / "runs" / "stopped" / CHECKPOINT)["state"]["step"]
    assert 1 <= step < steps
    assert (f"warning: SIGTERM: stopped after step {step} " in err
            and f"the same command resumes from step {step}" in err), err
    assert "Traceback" not in err
    resumed = run("stopped")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {step}" in resumed.stderr
    a, b = (read_checkpoint(tmp_path / "runs" / name / CHECKPOINT)
            for name in ("stopped", "straight"))
    assert _identical(a["state"], b["state"])
    assert all(t.dtype == torch.float64 for t in a["model_state"].values()
               if t.is_floating_point())
    for key in ("model_state", "ema_state", "optimizer"):
        assert _identical(a[key], b[key]), key
    assert _step_losses(tmp_path / "runs" / "stopped") == _step_losses(
        tmp_path / "runs" / "straight")


# ------------------------------------------------------------ 6: a new budget

def test_a_new_budget_re_plans_the_schedule_and_says_so(store_path, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="orbitgraph")
    cfg = dict(lr=1e-2, schedule="cosine", warmup_steps=0, min_lr=1e-6, log_every=10_000,
               **QUIET)
    Trainer(store_path, TINY, TrainConfig(max_steps=3, **cfg), tmp_path / "run").fit()
    caplog.clear()
    trainer = Trainer(store_path, TINY, TrainConfig(max_steps=9, **cfg), tmp_path / "run")
    trainer.fit()
    old, new = _plan(3).lr_at(3, 1e-2), _plan(9).lr_at(3, 1e-2)
    assert old == 1e-6 and new > 1e-3
    assert (f"learning-rate schedule re-planned for this run (cosine over 9 steps; total 3 "
            f"-> 9): the rate at step 3 goes {old:.4g} -> {new:.4g}") in caplog.messages
    caplog.clear()
    Trainer(store_path, TINY, TrainConfig(max_steps=10, **{**cfg, "schedule": "constant"}),
            tmp_path / "run").fit()
    assert any("re-planned" in m and "kind cosine -> constant" in m for m in caplog.messages)
    caplog.clear()
    Trainer(store_path, TINY, TrainConfig(max_steps=10, **{**cfg, "schedule": "constant"}),
            tmp_path / "run").fit()  # the same plan: nothing to say
    assert not any("re-planned" in m for m in caplog.messages)


def _plan(total: int) -> Schedule:
    """A cosine schedule over ``total`` steps (peak 1e-2, floor 1e-6), for its lr_at."""
    params = [torch.nn.Parameter(torch.zeros(1))]
    return Schedule(torch.optim.Adam(params, lr=1e-2), "cosine", 0, total, 3, 0.5, 1e-6)


# ------------------------------------------------------------ 7: loss curves, epoch loss

def test_orbitgraph_train_draws_every_step_and_its_epoch_loss_is_their_mean(
        store_path, tmp_path, capsys, monkeypatch):
    drawn = {}
    write = plots.write_loss_curves

    def recording(path, history, baseline, title, step_losses=None):
        drawn["step_losses"] = step_losses
        return write(path, history, baseline, title, step_losses)
    monkeypatch.setattr(plots, "write_loss_curves", recording)
    assert main(_train_args(store_path, tmp_path, "run", "--epochs", "1", "--max-atoms", "60")) == 0
    err = capsys.readouterr().err
    run = tmp_path / "run"
    losses = _step_losses(run)
    assert (run / "loss_curves.png").is_file()
    assert drawn["step_losses"] == losses and len(losses) > 1  # a curve, not one dot
    history = read_checkpoint(run / CHECKPOINT)["state"]["history"]
    values = [loss for _, loss in losses]
    assert history[0]["train_loss"] == pytest.approx(sum(values) / len(values), rel=1e-12)
    largest = max(losses, key=lambda item: item[1])
    assert (f"epoch 0: train loss {history[0]['train_loss']:.5g} (mean of {len(values)} "
            f"steps, the largest {largest[1]:.5g} at step {largest[0]})") in err
    assert history[0]["train_loss_max"] == largest[1]


class _SigintHandler(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield torch.tensor(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)


def test_loader_workers_leave_ctrl_c_to_the_trainer(store_path):
    """A terminal's Ctrl-C reaches the whole process group: a worker that died of it would
    break the step the trainer finishes before it stops."""
    from orbitgraph.train.loader import LoaderConfig, make_loader

    loader = make_loader(open_store(store_path).subset(split="train"),
                         LoaderConfig(num_workers=1))
    assert loader.worker_init_fn is not None
    # workers inherit this process's disposition: Python's own, as in a terminal (a shell
    # starts a background job, e.g. a CI script run with `&`, with SIGINT ignored)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        workers = torch.utils.data.DataLoader(_SigintHandler(), batch_size=None,
                                              num_workers=1,
                                              worker_init_fn=loader.worker_init_fn)
        assert [bool(ignored) for ignored in workers] == [True]
        assert [bool(ignored) for ignored in torch.utils.data.DataLoader(
            _SigintHandler(), batch_size=None, num_workers=1)] == [False]  # torch's default
    finally:
        signal.signal(signal.SIGINT, before)
