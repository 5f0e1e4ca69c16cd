"""Training runs as users drive them: budgets raised after a run finished, run directories
reused by mistake, stores without validation frames, frames over the batch budget,
elements the model never saw, and the weight stress gets in the loss."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from helpers import write_mptrj, write_small_mptrj
from orbitgraph.model.checkpoint import read_checkpoint
from orbitgraph.preprocess.build import build_store
from orbitgraph.preprocess.cluster import ClusterConfig
from orbitgraph.preprocess.graph_params import GraphParams
from orbitgraph.preprocess.store import SplitParams, open_store
from orbitgraph.train.callbacks import Callback
from orbitgraph.train.checkpointing import BEST, CHECKPOINT
from orbitgraph.train.cli import main
from orbitgraph.train.collate import collate, frame_from_structure
from orbitgraph.train.config import TrainConfig
from orbitgraph.train.evaluation import elements, evaluate
from orbitgraph.train.loader import LoaderConfig, plan_rank
from orbitgraph.train.logs import Formatter
from orbitgraph.train.metrics import loss_sums
from orbitgraph.train.trainer import Trainer
from orbitgraph.units import EV_PER_A3_IN_GPA

SYNC = ClusterConfig(kind="synchronous")
TINY = {"preset": "invariant", "hidden": 8, "species_dim": 4, "final_mlp": [8], "layers": 1,
        "num_radial": 8}
QUIET = dict(log_every=10_000, checkpoint_every=10_000, plots=False, tensorboard=False)


def logged(caplog, logger: str) -> list[str]:
    """The lines ``logger`` (a child of ``orbitgraph``) logged, as the command prints them."""
    return [Formatter("%(message)s").format(r) for r in caplog.records if r.name == logger]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    """~40 small frames; the test split holds elements the train split does not."""
    root = tmp_path_factory.mktemp("runs")
    build_store(write_small_mptrj(root / "small.json"), root / "store", frames_per_shard=6,
                cluster=SYNC, progress=False, split=SplitParams(0.15, 0.15, 0))
    return root / "store"


def _files(root: Path, model: dict, **train) -> tuple[str, str]:
    """A model YAML and a training-config YAML under ``root``."""
    m, t = root / f"model-{len(list(root.glob('model-*')))}.yaml", root / "train.yaml"
    m.write_text(yaml.safe_dump(model))
    t.write_text(yaml.safe_dump({"train": {"lr": 3e-3, "schedule": "constant", "seed": 3,
                                           "loader": {"max_atoms": 60, "seed": 1},
                                           **QUIET, **train}}))
    return str(m), str(t)


def _state(out: Path) -> dict:
    return read_checkpoint(out / CHECKPOINT)


# ------------------------------------------------------ budgets and run directories

def test_a_finished_run_continues_to_a_larger_budget(store_path, tmp_path, capsys):
    """Raised --max-steps, then raised --epochs: the run goes on where it stopped (in the
    middle of an epoch too) and ends exactly where one run given that budget ends."""
    model, cfg = _files(tmp_path, TINY)
    args = ["train", "--store", str(store_path), "--model", model, "--config", cfg]
    out = tmp_path / "run"
    assert main([*args, "--out", str(out), "--max-steps", "2"]) == 0
    assert _state(out)["state"]["step"] == 2
    capsys.readouterr()
    assert main([*args, "--out", str(out), "--max-steps", "5"]) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "straight"), "--max-steps", "5"]) == 0
    a, b = _state(out), _state(tmp_path / "straight")
    assert a["state"]["step"] == b["state"]["step"] == 5
    for key, value in b["model_state"].items():
        torch.testing.assert_close(a["model_state"][key], value, rtol=0, atol=0, msg=key)
    # the same budget again: nothing to do, said in a line
    capsys.readouterr()
    assert main([*args, "--out", str(out), "--max-steps", "5"]) == 0
    assert "nothing to train" in capsys.readouterr().err  # progress: stderr
    # epochs: one, then two
    out = tmp_path / "epochs"
    assert main([*args, "--out", str(out), "--epochs", "1"]) == 0
    per_epoch = _state(out)["state"]["step"]
    assert main([*args, "--out", str(out), "--epochs", "2"]) == 0
    state = _state(out)["state"]
    assert state["epoch"] == 2 and state["step"] > per_epoch and state["finished"]


def test_reusing_a_run_directory_for_another_run_is_one_line(store_path, tmp_path, capsys):
    model, cfg = _files(tmp_path, TINY)
    other_model, _ = _files(tmp_path, {**TINY, "hidden": 12})
    out = str(tmp_path / "run")
    args = ["train", "--store", str(store_path), "--config", cfg, "--out", out]
    assert main([*args, "--model", model, "--max-steps", "1"]) == 0
    capsys.readouterr()
    other_store = tmp_path / "other"
    build_store(write_small_mptrj(tmp_path / "s.json", frames=20), other_store,
                frames_per_shard=6, cluster=SYNC, progress=False)
    for argv, says in (([*args, "--model", other_model, "--max-steps", "2"], "another model"),
                       ([*args[:2], str(other_store), *args[3:], "--model", model,
                         "--max-steps", "2"], "on store"),
                       # stopped mid-epoch: a new budget would re-plan the epoch differently
                       ([*args, "--model", model, "--max-steps", "2", "--max-atoms", "90"],
                        "part-way through epoch 0")):
        assert main(argv) == 2
        err = capsys.readouterr().err  # the run's start (E0s...), then the refusal
        errors = [line for line in err.splitlines() if "error" in line]
        assert len(errors) == 1 and errors[0].startswith("orbitgraph: error: "), err
        assert says in errors[0] and "Traceback" not in err


# ------------------------------------------------------------ logs of resumed runs

class Killed(Exception):
    """What a kill does to the training loop: it stops between two steps."""


def tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} as TensorBoard shows the run's event files (later files'
    purge_step hiding the earlier files' events from that step on)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def test_a_stopped_and_resumed_run_logs_what_the_uninterrupted_run_logs(store_path, tmp_path):
    """metrics.csv, the history and TensorBoard's scalars of a run killed part-way through
    an epoch (some steps after a checkpoint) and resumed, of one stopped there by its step
    budget and given a larger one, and of one trained an epoch at a time all equal those
    of the uninterrupted run: one row per epoch, its train_loss the mean of all its steps."""
    from orbitgraph.train.loader import steps_per_epoch

    loader = LoaderConfig(max_atoms=60, seed=1)
    first_epoch = steps_per_epoch(open_store(store_path).subset(split="train"), loader, 0, 1)
    checkpoint = first_epoch + 2  # part-way through epoch 1 (asserted below)
    cfg = dict(epochs=3, lr=3e-3, schedule="constant", seed=3, ema_decay=0.9, loader=loader,
               log_every=10_000, checkpoint_every=checkpoint, plots=False, tensorboard=True)

    def run(out: Path, kill_at: int | None = None, **budget) -> Trainer:
        trainer = Trainer(store_path, TINY, TrainConfig(**{**cfg, **budget}), out)
        step = trainer.train_step
        trainer.step_losses = []

        def recording(batch):
            if trainer.state.step + 1 == kill_at:
                raise Killed
            loss = step(batch)
            trainer.step_losses.append(loss)
            return loss
        trainer.train_step = recording
        trainer.fit()
        return trainer

    straight = run(tmp_path / "straight")
    history = straight.state.history
    ends = [record["step"] for record in history]
    assert [record["epoch"] for record in history] == [0, 1, 2]
    assert ends[0] < checkpoint < checkpoint + 1 < ends[1]
    for record, start, end in zip(history, [0, *ends], ends, strict=False):
        mean = sum(straight.step_losses[start:end]) / (end - start)
        assert record["train_loss"] == pytest.approx(mean, rel=1e-12)

    with pytest.raises(Killed):  # the kill: two steps after the checkpoint
        run(tmp_path / "killed", kill_at=checkpoint + 2)
    assert _state(tmp_path / "killed")["state"]["step"] == checkpoint
    run(tmp_path / "killed")
    run(tmp_path / "budget", max_steps=checkpoint)  # stops part-way through epoch 1
    run(tmp_path / "budget")
    for epochs in (1, 2, 3):
        run(tmp_path / "by-epoch", epochs=epochs)

    expected_csv = (tmp_path / "straight" / "metrics.csv").read_text()
    expected_tb = tensorboard_scalars(tmp_path / "straight")
    assert [step for step, _ in expected_tb["train_loss"]] == ends
    differ = {name: [what for what, same in (
        ("metrics.csv", (tmp_path / name / "metrics.csv").read_text() == expected_csv),
        ("history", _state(tmp_path / name)["state"]["history"] == history),
        ("tensorboard", tensorboard_scalars(tmp_path / name) == expected_tb)) if not same]
        for name in ("killed", "budget", "by-epoch")}
    assert differ == {"killed": [], "budget": [], "by-epoch": []}


class Recorder(Callback):
    """Every hook call of a run, in order: ("start", step), ("step", step, loss),
    ("epoch", epoch, record)."""

    def __init__(self):
        self.calls = []

    def on_fit_start(self, trainer):
        self.calls.append(("start", trainer.state.step))

    def on_step_end(self, trainer, step, loss):
        assert step == trainer.state.step
        self.calls.append(("step", step, loss))

    def on_epoch_end(self, trainer, epoch, record):
        assert record is trainer.state.history[-1]
        self.calls.append(("epoch", epoch, dict(record)))


def test_callbacks_hear_each_step_and_each_validation_of_a_resumed_run_too(store_path,
                                                                           tmp_path):
    """A callback hears the start of fit (at the step a resumed run starts from), each
    optimiser step with its batch loss and each epoch's validation record, in order; a run
    stopped part-way and resumed, each part with its own callback, tells them the steps and
    records of the uninterrupted run, bit for bit."""
    from orbitgraph.train.loader import steps_per_epoch

    loader = LoaderConfig(max_atoms=60, seed=1)
    first_epoch = steps_per_epoch(open_store(store_path).subset(split="train"), loader, 0, 1)
    cfg = TrainConfig(epochs=2, lr=3e-3, schedule="cosine", warmup_steps=2, seed=3,
                      loader=loader, **QUIET)
    straight = Recorder()
    trainer = Trainer(store_path, TINY, cfg, tmp_path / "straight", callbacks=[straight])
    trainer.fit()
    steps = [call for call in straight.calls if call[0] == "step"]
    records = [call[2] for call in straight.calls if call[0] == "epoch"]
    assert straight.calls[0] == ("start", 0)
    assert [call[1] for call in steps] == list(range(1, trainer.state.step + 1))
    assert records == trainer.state.history and len(records) == 2
    # each epoch's record follows its last step; its train_loss the mean of its steps
    assert straight.calls[first_epoch + 1] == ("epoch", 0, records[0])
    assert straight.calls[-1] == ("epoch", 1, records[1])
    assert records[0]["train_loss"] == pytest.approx(
        sum(loss for _, _, loss in steps[:first_epoch]) / first_epoch, rel=1e-12)

    before, after = Recorder(), Recorder()
    Trainer(store_path, TINY, cfg, tmp_path / "resumed",
            callbacks=[before]).fit(stop_after=first_epoch + 1)
    resumed = Trainer(store_path, TINY, cfg, tmp_path / "resumed")
    resumed.callbacks.append(after)
    resumed.fit()
    assert after.calls[0] == ("start", first_epoch + 1)
    assert before.calls[1:] + after.calls[1:] == straight.calls[1:]


def write_small_pipeline(tmp_path: Path, test_fraction: float, experiments: dict,
                         frames: int = 20) -> Path:
    """pipelines.yaml in ``tmp_path`` over the small sample's first ``frames`` frames: one
    store, ``small`` (validation 0.2, test ``test_fraction``: of 20 frames, 0.2 leaves the
    test split empty; of 40, 0.25 gives every split frames, with split seeds 0 and 1), and
    ``experiments``."""
    write_small_mptrj(tmp_path / "small.json", frames=frames)
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump({
        "workdir": "runs", "cluster": {"kind": "synchronous"},
        "sources": {"small": {"path": "small.json", "format": "mptrj-json"}},
        "stores": {"small": {"source": "small", "frames_per_shard": 10,
                             "split": {"val_fraction": 0.2, "test_fraction": test_fraction}}},
        "experiments": experiments}))
    return path


def test_an_interrupted_experiment_reports_what_the_uninterrupted_one_reports(tmp_path,
                                                                           capsys,
                                                                           monkeypatch):
    """`orbitgraph run` interrupted part-way through an experiment's training (Ctrl-C two
    steps after a checkpoint) and run again writes the per-step losses (the loss curve),
    the epoch history and metrics.csv of the same experiment run uninterrupted."""
    train = {"epochs": 2, "lr": 3e-3, "schedule": "constant", "loader": {"max_atoms": 20},
             **QUIET, "checkpoint_every": 2}
    # evaluated on the validation split: with test_fraction 0.2 the test split is empty
    path = write_small_pipeline(tmp_path, 0.2, {
        name: {"store": "small", "model": TINY, "train": train, "threads": 1,
               "evaluate": {"split": "val"}} for name in ("straight", "interrupted")})
    step = Trainer.train_step

    def interrupted(self, batch):
        if self.state.step == 3:  # the checkpoint of step 2 is written
            raise KeyboardInterrupt
        return step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    assert main(["run", str(path), "--experiment", "interrupted"]) == 130
    monkeypatch.setattr(Trainer, "train_step", step)
    assert main(["run", str(path)]) == 0
    assert "resuming at step 2" in capsys.readouterr().err
    runs = tmp_path / "runs" / "experiments"
    straight, resumed = (json.loads((runs / name / "metrics_val.json").read_text())
                         for name in ("straight", "interrupted"))
    assert len(straight["step_losses"]) == straight["steps"] > 3
    for key in ("step_losses", "history", "steps"):
        assert resumed[key] == straight[key], key
    assert ((runs / "interrupted" / "metrics.csv").read_text() ==
            (runs / "straight" / "metrics.csv").read_text())


# ------------------------------------------------------- experiments of pipelines.yaml

def test_an_experiment_reports_only_results_of_its_current_configuration(tmp_path, capsys):
    """`orbitgraph run` after a change to an experiment's model, training budget or store
    trains it again in a directory of its own (experiments/NAME-ID), says which keys
    changed, keeps the earlier results and links experiments/NAME to the latest; a setting
    that changes no result, and going back to an earlier configuration, reuse results; a
    changed evaluate evaluates again without training; the results of an older version's
    experiments/NAME are kept aside; a run directory holding another configuration's
    checkpoint is refused in one line in the terms of `run`."""
    path = write_small_pipeline(tmp_path, 0.25, {
        "tiny": {"store": "small", "model": TINY, "threads": 1,
                 "train": {"max_steps": 1, "loader": {"max_atoms": 60}, **QUIET}}}, frames=40)
    experiments = tmp_path / "runs" / "experiments"
    older = experiments / "tiny"  # an older version's run directory: one per experiment name
    older.mkdir(parents=True)
    (older / CHECKPOINT).write_text("an older version's run")
    (older / "metrics_test.json").write_text("{}")

    def run(*settings: str, status: int = 0):
        assert main(["run", str(path), *(a for s in settings for a in ("--set", s))]) == status
        return capsys.readouterr()

    first = run()
    assert "experiment tiny: done (1 steps" in first.out, first.out
    first_dir = (experiments / "tiny").resolve()
    first_metrics = (first_dir / "metrics_test.json").read_text()

    bigger = ("experiments.tiny.model.hidden=12", "experiments.tiny.train.max_steps=2")
    second = run(*bigger)
    assert "experiment tiny: done (2 steps" in second.out and "nothing to do" not in second.out
    assert f"warning: {older} held results of an unrecorded configuration" in first.err
    assert (experiments / "tiny-unversioned" / CHECKPOINT).read_text() == "an older version's run"
    assert first_dir.parent == experiments and first_dir.name.startswith("tiny-")
    said = [line for line in second.err.splitlines() if "configuration changed" in line]
    assert len(said) == 1 and f"since {first_dir.name} (" in said[0], second.err
    assert "model.hidden 8 -> 12" in said[0] and "train.max_steps 1 -> 2" in said[0]
    second_dir = (experiments / "tiny").resolve()
    assert second_dir != first_dir and second_dir.parent == experiments
    assert (first_dir / "metrics_test.json").read_text() == first_metrics  # kept
    assert json.loads((second_dir / "metrics_test.json").read_text())["steps"] == 2
    # a setting that changes no result: reused; going back: the first results, linked again
    assert "nothing to do" in run(*bigger, "experiments.tiny.train.log_every=5").out
    figure = experiments / "comparison-small.png"
    stamp = figure.stat().st_mtime_ns
    back = run()
    assert f"nothing to do (metrics in {first_dir / 'metrics_test.json'})" in back.out
    assert (experiments / "tiny").resolve() == first_dir
    assert figure.stat().st_mtime_ns != stamp, "the comparison shows the first run again"
    # another split: evaluated again, the training reused
    stamp = (first_dir / CHECKPOINT).stat().st_mtime_ns
    other_split = run("experiments.tiny.evaluate.split=val")
    assert "experiment tiny: done (1 steps" in other_split.out
    assert "nothing to train" in other_split.err and "evaluating it" in other_split.err
    assert (first_dir / "metrics_val.json").is_file()
    assert (first_dir / CHECKPOINT).stat().st_mtime_ns == stamp
    # another store: trained again
    store = run("stores.small.split.seed=1")
    assert "experiment tiny: done (1 steps" in store.out
    assert "configuration changed" in store.err and "store_id '" in store.err
    assert len({p.resolve() for p in experiments.glob("tiny-*")}) == 4  # + tiny-unversioned
    # a run directory holding another run: one line, in the terms of `run`
    (first_dir / "metrics_test.json").unlink()
    (first_dir / CHECKPOINT).write_bytes((second_dir / CHECKPOINT).read_bytes())
    refused = [line for line in run(status=2).err.splitlines() if "error" in line]
    assert len(refused) == 1 and refused[0].startswith("orbitgraph: error: "), refused
    assert "holds a run of another model" in refused[0], refused
    assert f"delete {first_dir}" in refused[0] and "--out" not in refused[0]


# ------------------------------------------------------------- no validation frames

def single_atom_frames(path: Path) -> Path:
    """Five one-atom frames: fcc Cu (primitive cell) at three lattice constants, and an
    isolated Cu atom in a 20 Å box, periodic and open (as cases/single_atom.json)."""
    from ase import Atoms
    from ase.build import bulk

    return write_mptrj(path, {
        "mp-30": [bulk("Cu", "fcc", a=a) for a in (3.50, 3.61, 3.72)],
        "iso-Cu": [Atoms("Cu", cell=[20] * 3, pbc=True)],
        "iso-Cu-open": [Atoms("Cu", [[10] * 3], cell=[20] * 3)]})


def test_run_without_validation_frames_keeps_the_latest_model(tmp_path, capsys):
    """val_fraction 0: best.pt is the latest epoch's model (logged), and `orbitgraph run`
    trains and evaluates end to end; what needs validation is refused in one line."""
    single_atom_frames(tmp_path / "single_atom.json")
    (tmp_path / "pipelines.yaml").write_text(yaml.safe_dump({
        "workdir": "runs", "cluster": {"kind": "synchronous"},
        "sources": {"single": {"path": "single_atom.json", "format": "mptrj-json"}},
        "stores": {"single": {"source": "single", "frames_per_shard": 10,
                              "split": {"val_fraction": 0.0, "test_fraction": 0.34}}},
        "experiments": {"tiny": {"store": "single", "model": TINY,
                                 "train": {"epochs": 2, "lr": 0.005, **QUIET},
                                 "evaluate": {"split": "test"}}}}))
    assert main(["run", str(tmp_path / "pipelines.yaml"), "--quiet"]) == 0
    printed = capsys.readouterr().err  # a warning: shown under --quiet too
    assert "warning: the store has no validation frames" in printed
    assert "best.pt is the model at the end of the latest epoch" in printed
    run = tmp_path / "runs" / "experiments" / "tiny"
    assert (run / BEST).is_file() and (run / "metrics_test.json").is_file()
    best = read_checkpoint(run / BEST)["model_state"]
    latest = read_checkpoint(run / CHECKPOINT)["ema_state"]["shadow"]
    for key, value in latest.items():  # best.pt holds the EMA weights of the last epoch
        torch.testing.assert_close(best[key], value, rtol=0, atol=0)
    store = next((tmp_path / "runs" / "stores").iterdir())
    assert len(open_store(store).subset(split="val")) == 0
    for setting in ({"schedule": "plateau"}, {"early_stopping_patience": 2}):
        with pytest.raises(ValueError, match="no validation frames"):
            Trainer(store, TINY, TrainConfig(**QUIET, **setting), tmp_path / "refused")


def test_an_empty_split_is_a_one_line_error_for_evaluate_and_stops_a_run_before_training(
        tmp_path, capsys):
    """A store whose test split holds no frames: `orbitgraph run` that would evaluate on it
    stops before training, and `orbitgraph evaluate --split test` is one line naming the
    store, the split and the fraction that would give it frames (not a table of NaN)."""
    single_atom_frames(tmp_path / "single_atom.json")
    pipeline = {
        "workdir": "runs", "cluster": {"kind": "synchronous"},
        "sources": {"single": {"path": "single_atom.json", "format": "mptrj-json"}},
        "stores": {"single": {"source": "single", "frames_per_shard": 10,
                              "split": {"val_fraction": 0.34, "test_fraction": 0.0}}},
        "experiments": {"tiny": {"store": "single", "model": TINY,
                                 "train": {"max_steps": 1, **QUIET},
                                 "evaluate": {"split": "test"}}}}
    (tmp_path / "pipelines.yaml").write_text(yaml.safe_dump(pipeline))
    assert main(["run", str(tmp_path / "pipelines.yaml"), "--quiet"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("orbitgraph: error: ") and "cannot evaluate on the test split: " \
        "the test split holds no frames: test_fraction 0 takes none of the 3 materials; " \
        "test_fraction " in error
    run = tmp_path / "runs" / "experiments" / "tiny"
    assert not (run / BEST).exists(), "refused before training"

    pipeline["experiments"]["tiny"]["evaluate"]["split"] = "val"
    (tmp_path / "pipelines.yaml").write_text(yaml.safe_dump(pipeline))
    assert main(["run", str(tmp_path / "pipelines.yaml"), "--quiet"]) == 0
    store = next((tmp_path / "runs" / "stores").iterdir())
    capsys.readouterr()
    assert main(["evaluate", str(run / BEST), "--store", str(store), "--split", "test",
                 "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert f"orbitgraph: error: {store}: cannot evaluate on the test split" in err
    assert not (run / "metrics_test.json").exists()


# ------------------------------------------------------------------ batch budgets

def test_frames_over_the_budget_are_reported_and_budgets_are_per_device(store_path, tmp_path,
                                                                       caplog):
    train = open_store(store_path).subset(split="train")
    atoms = np.asarray(train.index["n_atoms"])
    edges = np.asarray(train.index["n_edges"])
    budget = int(atoms.max()) - 1  # the largest frames exceed it
    over = int(((atoms > budget) | (edges > 20 * budget)).sum())
    assert over > 0
    cfg = TrainConfig(max_steps=1, loader=LoaderConfig(
        max_atoms=4096, max_atoms_by_device={"cpu": budget, "cuda": 8192}), **QUIET)
    trainer = Trainer(store_path, TINY, cfg, tmp_path / "run")
    assert trainer.cfg.loader.max_atoms == budget  # this device's budget
    trainer.fit()
    lines = logged(caplog, "orbitgraph.train")
    said = [line for line in lines if "exceed the batch budget" in line]
    assert len(said) == 1 and said[0].startswith(f"warning: {over} training frames")
    assert f"largest {atoms.max()} atoms" in said[0]
    sizes = dict(zip(zip(train.index["shard"].to_pylist(), train.index["row"].to_pylist(),
                         strict=True),
                     atoms.tolist(), strict=True))
    for batch in plan_rank(train, trainer.cfg.loader, 0, 0, 1):
        total = sum(sizes[x] for x in batch)
        assert total <= budget or (len(batch) == 1 and total > budget)
    assert LoaderConfig(max_atoms_by_device={"cuda": 8}).for_device("cuda:1").max_atoms == 8
    assert LoaderConfig(max_atoms_by_device={"cuda:1": 8}).for_device("cuda:0").max_atoms == 1024
    caplog.clear()
    Trainer(store_path, TINY, TrainConfig(max_steps=1, **QUIET), tmp_path / "roomy").fit()
    lines = logged(caplog, "orbitgraph.train")
    assert not [line for line in lines if "exceed the batch budget" in line]


# -------------------------------------------------------------- untrained elements

def test_calculator_and_evaluate_warn_once_per_untrained_element(store_path, tmp_path, caplog):
    from ase.build import bulk

    from orbitgraph.train.calculator import OrbitCalculator, UntrainedElementWarning

    store = open_store(store_path)
    trained = elements(store.subset(split="train"))
    Trainer(store, TINY, TrainConfig(max_steps=1, **QUIET), tmp_path / "run").fit()
    calc = OrbitCalculator.from_checkpoint(tmp_path / "run" / BEST)
    assert calc.known_elements == trained
    a, b = [el for el in ("Au", "Pt", "Ag", "Ir", "Rh", "Pd") if el not in trained][:2]
    known = trained[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for symbol, lattice in ((known, 4.0), (a, 4.08), (a, 4.1), (b, 3.9), (a, 4.2)):
            atoms = bulk(symbol, "fcc", a=lattice, cubic=True)
            atoms.calc = calc
            atoms.get_potential_energy()
        mixed = bulk(known, "fcc", a=4.0, cubic=True)
        mixed.symbols[0] = b
        mixed.calc = calc
        mixed.get_forces()
    said = [str(w.message) for w in caught if issubclass(w.category, UntrainedElementWarning)]
    assert len(said) == 2 and f"element {a}:" in said[0] and f"element {b}:" in said[1]
    assert f"the model knows {', '.join(trained)}" in said[0]
    # evaluate: one line per element absent from the model's training frames
    frames = {"m-1": [bulk(a, "fcc", a=4.08)] * 2, "m-2": [bulk(known, "fcc", a=4.0)],
              "m-3": [mixed]}
    other = tmp_path / "other"
    build_store(write_mptrj(tmp_path / "other.json", frames, labels="zero"), other,
                cluster=SYNC, progress=False, split=SplitParams(0.0, 0.0, 0))
    caplog.clear()
    metrics = evaluate(tmp_path / "run" / BEST, other, split="train")
    lines = logged(caplog, "orbitgraph.evaluate")
    assert metrics["untrained_elements"] == sorted([a, b])
    assert metrics["frames_with_untrained_elements"] == 3
    assert len(lines) == 2 and all(line.startswith("warning: element ") for line in lines)
    assert {line.split(":")[1].split()[-1] for line in lines} == {a, b}


# --------------------------------------------------------------------------- stress

def test_stress_counts_in_gpa():
    """Stress counts in GPa: under the squared loss with stress weight 0.1 and forces weight
    10, a 1 GPa error in every stress component weighs as much as a 0.1 eV/Å error in every
    force component."""
    from ase.build import bulk

    cfg = TrainConfig(loss="mse", stress_weight=0.1, forces_weight=10.0)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    batch = collate([frame_from_structure(atoms.cell.array, atoms.positions, atoms.numbers,
                                          GraphParams(k=16), energy=-14.0,
                                          forces=np.zeros((4, 3)), stress=np.zeros((3, 3)))],
                    k=16)
    out = {"energy": torch.tensor([-14.0], dtype=torch.float64),
           "forces": torch.full((4, 3), 0.1, dtype=torch.float64),
           "stress": torch.full((1, 3, 3), 1.0 / EV_PER_A3_IN_GPA, dtype=torch.float64)}
    sums = loss_sums(out, batch, cfg.loss, cfg.huber_delta)
    stress_term = cfg.stress_weight * float(sums["stress"] / sums["n_stress"])
    forces_term = cfg.forces_weight * float(sums["forces"] / sums["n_forces"])
    assert stress_term == pytest.approx(forces_term, rel=1e-6) and stress_term > 0


# ----------------------------------------------------------------------- checkpoints

def test_checkpoints_are_read_as_plain_data_only(tmp_path):
    """One reader, torch.load(weights_only=True): configs and tensors come back (paths as
    strings, tuples as tuples); a file holding any other object is refused in one line
    naming it, without running its code."""
    from fractions import Fraction

    from orbitgraph.model.checkpoint import write_checkpoint

    write_checkpoint({"weights": torch.ones(2), "config": {"bands": (2.5, 3.5)},
                      "where": tmp_path}, tmp_path / "ok.pt")
    got = read_checkpoint(tmp_path / "ok.pt")
    assert torch.equal(got["weights"], torch.ones(2))
    assert got["config"] == {"bands": (2.5, 3.5)} and got["where"] == str(tmp_path)
    torch.save({"state": Fraction(1, 3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt: not a checkpoint of plain data"):
        read_checkpoint(tmp_path / "other.pt")


def test_every_loader_of_checkpoint_pt_gives_the_weights_validation_used(store_path,
                                                                         tmp_path, capsys):
    """evaluate, `orbitgraph evaluate`, the ASE calculator and the reports load a run's
    checkpoint.pt with the EMA weights that validation used (its metrics equal the logged
    validation's) and say which weights they loaded; the raw ones on request; best.pt,
    which holds the EMA weights only, refuses the raw ones in one line."""
    from ase import Atoms

    from orbitgraph.train.calculator import OrbitCalculator

    out = tmp_path / "run"
    cfg = TrainConfig(epochs=1, lr=3e-3, ema_decay=0.5, loader=LoaderConfig(max_atoms=60),
                      **QUIET)
    trainer = Trainer(store_path, TINY, cfg, out)
    trainer.fit()
    validated = trainer.state.history[-1]  # the run's one epoch: best.pt is its model
    keys = ("energy_mae_meV_per_atom", "forces_mae_meV_per_A", "stress_mae_GPa")
    for path in (out / CHECKPOINT, out / BEST):
        metrics = evaluate(path, store_path, split="val")
        for key in keys:
            assert metrics[key] == pytest.approx(validated[key], rel=1e-9), (path.name, key)
        assert metrics["weights"].startswith(f"EMA weights of {path}")
    raw = evaluate(out / CHECKPOINT, store_path, split="val", weights="raw")
    assert raw["energy_mae_meV_per_atom"] != pytest.approx(
        validated["energy_mae_meV_per_atom"], rel=1e-6)
    assert raw["weights"].startswith(f"raw weights of {out / CHECKPOINT}")
    # the calculator and the reports: checkpoint.pt's model is best.pt's
    frame = open_store(store_path).subset(split="train")[0]
    atoms = Atoms(frame["numbers"], frame["positions"], cell=frame["cell"], pbc=True)
    energies = {}
    for path in (out / CHECKPOINT, out / BEST):
        atoms.calc = OrbitCalculator.from_checkpoint(path)
        energies[path.name] = atoms.get_potential_energy()
        assert atoms.calc.weights.startswith("EMA weights")
    assert energies[CHECKPOINT] == pytest.approx(energies[BEST], rel=1e-12, abs=1e-12)
    from orbitgraph.train.weights import load_potential

    a, b = (load_potential(path).model.state_dict() for path in (out / CHECKPOINT, out / BEST))
    for key, value in b.items():
        torch.testing.assert_close(a[key], value, rtol=0, atol=0, msg=key)
    # the command says which weights it evaluated
    capsys.readouterr()
    args = ["evaluate", "--store", str(store_path), "--split", "val", "--json",
            str(tmp_path / "m.json")]
    assert main([*args, str(out / CHECKPOINT)]) == 0
    assert f"weights: EMA weights of {out / CHECKPOINT}, step {trainer.state.step} (those " \
           "validation used)" in capsys.readouterr().out
    assert main([*args, str(out / BEST), "--weights", "raw"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds the ema weights only" in err, err


# ------------------------------------------------------------------------------ EMA

def test_ema_decay_warms_up():
    """d_t = min(decay, (1 + t) / (10 + t)), as torch_ema (mace-torch) does: after 20 steps
    a fixed 0.99 would still hold 0.82 of the initial weights; this holds 0.09."""
    from orbitgraph.train.ema import EMA, warmup_decay

    model = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    ema = EMA(model, 0.99)
    with torch.no_grad():
        model.weight.fill_(1.0)
    initial_share = 1.0
    for t in range(1, 21):
        ema.update(model)
        initial_share *= min(0.99, (1 + t) / (10 + t))
    shadow = ema.module.weight
    torch.testing.assert_close(shadow, torch.full_like(shadow, 1.0 - initial_share))
    next_decay = warmup_decay(ema.decay, ema.updates + 1)
    assert initial_share < 0.1 and next_decay == pytest.approx(22 / 31)
    again = EMA(model, 0.99)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 20 and torch.equal(again.module.weight, shadow)
