"""The ``orbitgraph`` command: ``build``, ``verify``, ``info``, ``train``, ``evaluate``,
``export``, ``run``.

Settings follow one precedence everywhere: the declared defaults < the YAML file
(``--config``, pipelines.yaml, a model YAML) < the command line. The common settings have
flags; every other key is settable with ``--set KEY.PATH=VALUE`` (repeatable; the value is
read as YAML, so ``--set train.lr=1e-3`` and ``--set model.radial_mlp=[32,32]`` work).
``orbitgraph COMMAND --help`` lists the keys, their types and defaults.

Every error a user can cause (missing file, bad YAML, a refused setting, unknown preset, an
incompatible store: an :class:`~orbitgraph.errors.OrbitgraphError`, or a file the system
cannot open) is printed as one line, ``orbitgraph: error: ...``, with exit code 2; any other
exception is a defect and keeps its traceback.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import textwrap
from dataclasses import dataclass
from typing import NoReturn

from orbitgraph.config import yaml_value
from orbitgraph.errors import ConfigError, MissingFileError, OrbitgraphError
from orbitgraph.preprocess.cluster import BuildProcessError


def _value(text: str):
    """A flag's value read as YAML (``1e-3`` a number, ``null`` None); the configs then
    validate it, so that a bad value is one line naming its key."""
    try:
        return yaml_value(text)
    except ConfigError:
        return text


def _given(args, **flags: str) -> dict[str, object]:
    """{key path: value} of the flags given on the command line (their defaults are None)."""
    return {path: getattr(args, dest) for dest, path in flags.items()
            if getattr(args, dest, None) is not None}


def _document(args, sections: dict, given: dict[str, object]) -> dict:
    """``sections`` (from files) with the flags ``given`` set, then the --set items: on the
    command line, the later wins."""
    from orbitgraph.train.pipelines import apply_overrides, set_path
    doc = {name: dict(section) for name, section in sections.items()}
    for path, value in given.items():
        set_path(doc, path, value)
    doc = apply_overrides(doc, args.set or ())
    unknown = sorted(set(doc) - set(sections))
    if unknown:
        raise ConfigError(f"--set {unknown[0]}...: the keys of this command start with "
                          f"{' or '.join(s + '.' for s in sections)}", unknown[0])
    return doc


# ------------------------------------------------------------------------ settings

def build_settings(args):
    """(StoreParams, ClusterConfig) of ``orbitgraph build --source ... --out ...``."""
    from orbitgraph.preprocess.cluster import ClusterConfig
    from orbitgraph.preprocess.store.params import StoreParams
    given = _given(args, k="store.graph.k", ties="store.graph.ties",
                   tie_tolerance="store.graph.tie_tolerance", cutoff="store.graph.cutoff",
                   backend="store.backend", energy_key="store.energy_key",
                   forces_key="store.forces_key", stress_key="store.stress_key",
                   virial_key="store.virial_key", frames_per_shard="store.frames_per_shard",
                   min_distance="store.min_distance", workers="cluster.workers")
    scheduler = getattr(args, "scheduler", None)
    if scheduler == "synchronous":
        given["cluster.kind"] = "synchronous"
    elif scheduler not in (None, "local"):
        given.update({"cluster.kind": "address", "cluster.address": scheduler})
    doc = _document(args, {"store": {}, "cluster": {}}, given)
    return (StoreParams.from_dict(doc["store"], where="store"),
            ClusterConfig.from_dict(doc["cluster"], where="cluster"))


@dataclass(frozen=True)
class RunSettings:
    """What ``orbitgraph train`` runs: the store (built first from ``source`` when given,
    with ``build``'s settings), the run directory and the configs."""

    store: str | list  # a store, or several datasets' DatasetSpecs
    out: str
    train: object  # TrainConfig
    model: object  # ModelConfig
    source: str | None = None
    format: str | None = None
    build: object = None  # StoreParams


def run_settings(args) -> RunSettings:
    """The settings of ``orbitgraph train``: defaults < the ``--config`` run file (its
    sections, a flat file of train settings, or a mace-torch config: see
    :mod:`orbitgraph.train.run_file`) < ``--store``/``--model``/``--out``, the flags and
    ``--set``."""
    from orbitgraph.model.config import ModelConfig, model_spec
    from orbitgraph.preprocess.store.params import StoreParams
    from orbitgraph.train.config import TrainConfig
    from orbitgraph.train.run_file import RunFile, read_run_file

    run = read_run_file(args.config) if args.config else RunFile()
    model = args.model if args.model is not None else run.model
    if model is None:
        raise ConfigError("train: give --model (a preset: mace, sevennet, invariant; or a YAML "
                        "file), or a model: section in the --config file")
    given = _given(args, device="train.device", epochs="train.epochs",
                   max_steps="train.max_steps")
    if args.max_atoms is not None:  # this run's budget, whatever the per-device ones say
        given.update({"train.loader.max_atoms": args.max_atoms,
                      "train.loader.max_atoms_by_device": {}})
    doc = _document(args, {"train": run.train, "model": model_spec(model),
                           "build": run.build}, given)
    out = args.out or run.out
    if out is None:
        raise ConfigError("train: give --out (the run directory), or out: in the --config file")
    if run.stores is not None and (run.store is not None or run.source is not None):
        raise ConfigError("stores: several datasets, and store:/source: one; give either",
                          "stores")
    store = args.store or run.store
    if store is None and run.stores is not None:
        from orbitgraph.train.datasets import dataset_specs
        store = dataset_specs(run.stores)
    if store is None and run.source is not None:
        store = os.path.join(out, "store")
    if store is None:
        raise ConfigError("train: give --store, or store: or source: in the --config file")
    if doc["build"] and run.source is None:
        raise ConfigError("build: settings for building a store, but no source: to build it "
                        "from")
    return RunSettings(store=store if isinstance(store, list) else str(store), out=str(out),
                       source=run.source, format=run.format,
                       train=TrainConfig.from_dict(doc["train"], where="train"),
                       model=ModelConfig.from_dict(doc["model"], where="model"),
                       build=StoreParams.from_dict(doc["build"], where="build"))


def train_settings(args):
    """(TrainConfig, ModelConfig) of ``orbitgraph train`` (:func:`run_settings`)."""
    run = run_settings(args)
    return run.train, run.model


def evaluate_settings(args):
    from orbitgraph.train.config import EvaluateConfig

    given = _given(args, split="evaluate.split", device="evaluate.device")
    doc = _document(args, {"evaluate": {}}, given)
    return EvaluateConfig.from_dict(doc["evaluate"], where="evaluate")


# ------------------------------------------------------------------------ commands

def _cmd_info(args) -> int:
    from orbitgraph.preprocess.commands import info
    print(info(args.store))
    return 0


def _cmd_verify(args) -> int:
    from orbitgraph.preprocess.commands import verify
    ok, text = verify(args.store, sample=args.sample)
    print(text)
    return 0 if ok else 1


STORE_FLAGS = ("source", "out", "format", "k", "ties", "tie_tolerance", "cutoff", "backend",
               "energy_key", "forces_key", "stress_key", "virial_key", "frames_per_shard",
               "min_distance", "scheduler", "workers")


def _cmd_build(args) -> int:
    if args.pipeline is not None:
        from orbitgraph.train.pipelines import load_pipelines
        flags = [f"--{name.replace('_', '-')}" for name in STORE_FLAGS
                 if getattr(args, name) is not None]
        if flags:
            raise ConfigError(f"{flags[0]}: with a pipelines.yaml, set its keys with --set "
                              "(e.g. --set stores.NAME.graph.k=12)", flags[0])
        config = load_pipelines(args.pipeline, overrides=args.set or ())
        names = [args.store] if args.store else list(config.stores)
        for name in names:
            summary = config.build(name, progress=not args.quiet,
                                   discard_partial=args.discard_partial)
            print(summary.text())
            print(summary.store)
        return 0
    if not (args.source and args.out):
        raise ConfigError("build needs either a pipelines.yaml or both --source and --out")
    store, cluster = build_settings(args)
    summary = _build(args.source, args.out, args.format, store, cluster, not args.quiet,
                     args.discard_partial)
    print(summary.text())
    print(summary.store)
    return 0


def _build(source: str, out: str, source_format: str | None, store, cluster, progress: bool,
           discard_partial: bool = False):
    """Build (or finish, or find complete) the store of ``source`` in ``out`` with the
    StoreParams ``store`` on ``cluster``; its BuildSummary."""
    from orbitgraph.preprocess.build import build_store
    return build_store(source, out, store, source_format=source_format, cluster=cluster,
                       progress=progress, discard_partial=discard_partial)


def _cmd_train(args) -> int:
    from orbitgraph.train.trainer import Trainer

    run = run_settings(args)  # validated before the store is opened or built
    if run.source is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from orbitgraph.preprocess.store.manifest import MANIFEST_FILE
        if not os.path.isfile(os.path.join(run.store, MANIFEST_FILE)):  # not by every rank
            raise ConfigError(f"{run.store}: no store yet; with several processes (torchrun), "
                            "build it first (orbitgraph build, or this command in one "
                            "process)")
    elif run.source is not None:
        from orbitgraph.preprocess.cluster import ClusterConfig
        summary = _build(run.source, run.store, run.format, run.build, ClusterConfig(),
                         not args.quiet)
        print(summary.text())
    trainer = Trainer(run.store, run.model, run.train, run.out)
    result = trainer.fit()
    if trainer.info.is_main:
        print(f"trained {result['steps_this_call']} steps in {result['wall_s']:.1f} s (step "
              f"{result['steps']} of the run); checkpoints, metrics.csv and plots in {run.out}")
    return 0


def _cmd_evaluate(args) -> int:
    from pathlib import Path

    from orbitgraph.train.evaluation import (
        evaluate,
        evaluate_datasets,
        evaluate_source,
        write_json,
    )
    from orbitgraph.train.report import datasets_table, evaluation_table

    settings = evaluate_settings(args)
    if not Path(args.checkpoint).is_file():
        raise MissingFileError(f"{args.checkpoint}: no such checkpoint")
    device = settings.device or "cpu"
    if args.source is not None:
        if args.split is not None:
            raise ConfigError("--split: with --source every frame of the file is evaluated "
                              "(a store's splits: --store)", "--split")
        name = Path(args.source.rstrip("/")).name.split(".")[0]
        out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"evaluate-{name}"
        keys = _given(args, energy_key="energy_key", forces_key="forces_key",
                      stress_key="stress_key", virial_key="virial_key")
        metrics = evaluate_source(args.checkpoint, args.source, out, source_format=args.format,
                                  device=device, weights=args.weights, label_keys=keys,
                                  dataset=args.dataset)
    else:
        given = [flag for flag in ("format", "energy_key", "forces_key", "stress_key",
                                   "virial_key") if getattr(args, flag) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ConfigError(f"{flag}: reads a --source file; a --store's labels are "
                              "stored already", flag)
        out = (Path(args.out) if args.out
               else Path(args.checkpoint).parent / f"evaluate-{settings.split}")
        store = args.store
        if store is None and args.dataset is not None:  # that dataset's store, recorded
            from orbitgraph.train.datasets import recorded_store
            from orbitgraph.train.weights import load_potential
            store = recorded_store(load_potential(args.checkpoint).datasets, args.dataset,
                                   args.checkpoint)
        if store is None:  # every dataset of a model trained on several
            metrics = evaluate_datasets(args.checkpoint, split=settings.split, device=device,
                                        weights=args.weights, out=out)
        else:
            metrics = evaluate(args.checkpoint, store, split=settings.split, device=device,
                               weights=args.weights, out=out, dataset=args.dataset)
    if args.json:
        metrics["files"]["metrics"] = str(Path(args.json))
    print(f"weights: {metrics['weights']}")
    print(datasets_table(metrics) if "datasets" in metrics else evaluation_table(metrics))
    write_json(Path(metrics["files"]["metrics"]), metrics)
    for kind, path in metrics["files"].items():
        print(f"{kind}: {path}")
    for name, group in metrics.get("datasets", {}).items():
        print(f"dataset {name}: {Path(group['files']['metrics']).parent}")
    return 0


def _cmd_export(args) -> int:
    from orbitgraph.preprocess.store import open_store
    from orbitgraph.train.export import export_store

    count = export_store(open_store(args.store), args.out, format=args.format, split=args.split)
    split = f" (split {args.split})" if args.split else ""
    print(f"exported {count} frames of {args.store}{split} to {args.out}")
    return 0


def _cmd_package(args) -> int:
    import torch

    from orbitgraph.train.package import package_model

    dtype = getattr(torch, args.dtype) if args.dtype else None
    done = package_model(args.checkpoint, args.out, program=args.program,
                         weights=args.weights, dtype=dtype)
    kind = str(done.dtype).removeprefix("torch.")
    print(f"weights: {done.weights}")
    print(f"model file ({kind}) written to {done.model_file}")
    if done.program is not None:
        print(f"exported program ({kind}, torch.export) written to {done.program}; its "
              f"energy, forces and stress differ from the model file's by "
              f"{done.program_difference:.1e} (relative, largest)")
    return 0


def _cmd_run(args) -> int:
    from orbitgraph.train.pipelines import load_pipelines
    config = load_pipelines(args.pipeline, overrides=args.set or ())
    config.run([args.experiment] if args.experiment else None, progress=not args.quiet)
    return 0


# ------------------------------------------------------------------------ parser

def _keys(*sections) -> str:
    """The epilog listing the keys settable with --set: (config class, prefix, collapse)."""
    from orbitgraph.config import reference_rows
    if not sections[0][0]:
        return ""
    lines = ["settable with --set KEY.PATH=VALUE (defaults < file < command line):"]
    for model, prefix, collapse in sections:
        for path, kind, default, bounds, description in reference_rows(model, prefix, collapse):
            limits = f", {bounds}" if bounds else ""
            lines.append(f"  {path}  {kind}{limits}; default {default}")
            if description:
                lines.append(textwrap.fill(description, width=90, initial_indent=" " * 6,
                                           subsequent_indent=" " * 6))
    return "\n".join(lines)


def _set_option(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE",
                   help=f"set any key listed below (repeatable; VALUE read as YAML), e.g. "
                        f"--set {example}")


def parser(keys: bool = True) -> argparse.ArgumentParser:
    """The argument parser; with ``keys``, each command's help lists the keys it can set
    (importing the configs, and torch with them: only when help is asked for)."""
    if keys:
        from orbitgraph.model.config import ModelConfig
        from orbitgraph.preprocess.cluster import ClusterConfig
        from orbitgraph.preprocess.store.params import StoreParams
        from orbitgraph.train.config import EvaluateConfig, TrainConfig
        from orbitgraph.train.pipelines import PipelinesFile
    else:
        ModelConfig = ClusterConfig = StoreParams = EvaluateConfig = TrainConfig = None
        PipelinesFile = None

    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="orbitgraph", description="Build periodic kNN graph "
                                "stores once; train MACE-family potentials on them.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pipeline_keys = _keys((PipelinesFile, "", {TrainConfig: "train settings"}),
                          (TrainConfig, "experiments.NAME.train", None))
    s = sub.add_parser("build", formatter_class=raw,
                       help="build a graph store (from pipelines.yaml or --source/--out)",
                       epilog=_keys((StoreParams, "store", None), (ClusterConfig, "cluster", None))
                       + "\nwith a pipelines.yaml, its keys:\n" + pipeline_keys)
    s.add_argument("pipeline", nargs="?", help="pipelines.yaml; builds its stores")
    s.add_argument("--store", help="with a pipelines.yaml: only this store")
    s.add_argument("--source", help="MPtrj .json/.json.gz; extxyz, ASE .db/.aselmdb or "
                   "Alexandria .json.bz2 files: a file, a folder or a quoted glob pattern")
    s.add_argument("--format", choices=["mptrj-json", "extxyz", "ase-db", "alexandria-json"],
                   help="default: from the name")
    s.add_argument("--out", help="store directory")
    s.add_argument("--k", type=_value, help="store.graph.k")
    s.add_argument("--ties", type=_value, help="store.graph.ties: include or break")
    s.add_argument("--tie-tolerance", type=_value, help="store.graph.tie_tolerance, Å")
    s.add_argument("--cutoff", type=_value, help="store.graph.cutoff, Å")
    s.add_argument("--backend", type=_value, help="store.backend: zarr or arrow")
    s.add_argument("--energy-key", help="store.energy_key: field holding the energy, eV "
                   "(default: the source's convention)")
    s.add_argument("--forces-key", help="store.forces_key: per-atom field holding the forces, "
                   "eV/Å (default: the source's convention)")
    s.add_argument("--stress-key", help="store.stress_key: field holding the stress, eV/Å³ "
                   "with ASE's sign; naming it makes it required in every frame")
    s.add_argument("--virial-key", help="store.virial_key: extxyz field holding the virial, "
                   "eV; stored as the stress -virial / V")
    s.add_argument("--frames-per-shard", type=_value, help="store.frames_per_shard")
    s.add_argument("--min-distance", type=_value, help="store.min_distance, Å; records with "
                   "closer atoms are quarantined")
    s.add_argument("--scheduler", help="'synchronous' (this process), or a Dask scheduler "
                   "address (default: without a cluster, one forked process per core, for a "
                   "source up to cluster.in_process_max_bytes; a LocalCluster sized to this "
                   "machine above it)")
    s.add_argument("--workers", type=_value, help="cluster.workers: worker processes, "
                   "forked or a LocalCluster's (1 without a cluster: this process)")
    s.add_argument("--discard-partial", action="store_true",
                   help="delete a partial build of another store (or of another "
                   "frames_per_shard) found in the store's folder, then build; a complete "
                   "store is never deleted")
    _set_option(s, "store.split.val_fraction=0.1")
    s.set_defaults(func=_cmd_build)
    s = sub.add_parser("info", help="summarise a store's manifest")
    s.add_argument("store")
    s.set_defaults(func=_cmd_info)
    s = sub.add_parser("verify", help="check checksums, structure and a sample of graphs")
    s.add_argument("store")
    s.add_argument("--sample", type=int, default=64, help="graphs to rebuild and compare")
    s.set_defaults(func=_cmd_verify)
    s = sub.add_parser("train", formatter_class=raw, help="train a potential on a store",
                       epilog=_keys((TrainConfig, "train", None), (ModelConfig, "model", None),
                                   (StoreParams, "build", None)))
    s.add_argument("--store", help="the store to train on (or store: or source: in --config)")
    s.add_argument("--model", help="preset (mace, sevennet, invariant) or YAML (or model: in "
                   "--config)")
    s.add_argument("--out", help="run directory, resumed if it has a checkpoint (or out: in "
                   "--config)")
    s.add_argument("--epochs", type=_value, help="train.epochs: train to this many epochs (a "
                   "finished run continues to a larger number)")
    s.add_argument("--max-steps", type=_value, help="train.max_steps: train to this many "
                   "steps (overrides --epochs)")
    s.add_argument("--device", help="train.device: cpu (default), cuda, cuda:N or mps")
    s.add_argument("--max-atoms", type=_value, help="atoms per batch on this device (sets "
                   "train.loader.max_atoms and clears train.loader.max_atoms_by_device)")
    s.add_argument("--config", help="run file: YAML with sections store or source (and "
                   "build), model, train and out; a file of train settings alone; or a "
                   "mace-torch config (mace_run_train's keys)")
    _set_option(s, "train.lr=1e-3 --set model.channels=32")
    s.set_defaults(func=_cmd_train)
    s = sub.add_parser("evaluate", formatter_class=raw,
                       help="errors of a checkpoint on a split of a store or on a source "
                       "file, beside the baselines; per-frame predictions and a parity plot",
                       epilog=_keys((EvaluateConfig, "evaluate", None)))
    s.add_argument("checkpoint")
    frames = s.add_mutually_exclusive_group()
    frames.add_argument("--store", help="a store: evaluate one of its splits (--split); "
                        "none, for a model trained on several datasets: each dataset's "
                        "store, as training recorded it")
    frames.add_argument("--source", help="MPtrj .json/.json.gz, or extxyz file or folder: "
                        "evaluate all its frames, graphs built with the checkpoint's graph "
                        "parameters (into OUT/store)")
    s.add_argument("--format", choices=["mptrj-json", "extxyz"], help="with --source: its "
                   "format (default: from the name)")
    for name, what in (("energy", "the energy, eV"), ("forces", "the forces, eV/Å"),
                       ("stress", "the stress, eV/Å³ with ASE's sign"),
                       ("virial", "the virial, eV (stored as the stress -virial / V)")):
        s.add_argument(f"--{name}-key", help=f"with --source: the field holding {what} "
                       "(default: the source's convention, as orbitgraph build reads it)")
    s.add_argument("--split", help="evaluate.split: train, val or test (default: test)")
    s.add_argument("--out", help="folder for predictions.extxyz, predictions.csv, parity.png "
                   "and metrics.json (default: evaluate-SPLIT, or evaluate-SOURCENAME, beside "
                   "the checkpoint)")
    s.add_argument("--device", help="evaluate.device (default: cpu)")
    s.add_argument("--weights", choices=["ema", "raw"], help="which weights of a training "
                   "checkpoint.pt (default: those validation used, the EMA's where training "
                   "kept one; best.pt holds those only)")
    s.add_argument("--json", help="where to write the metrics (default: OUT/metrics.json)")
    s.add_argument("--dataset", help="for a model trained on several datasets: the one "
                   "whose energy reference (E0s) the labels of --store or --source are on "
                   "(default with --store: the dataset whose store it is; required with "
                   "--source); alone, that dataset's own store. Without --store, --source "
                   "and --dataset: every dataset, each on its own reference, and all together")
    _set_option(s, "evaluate.split=val")
    s.set_defaults(func=_cmd_evaluate)
    s = sub.add_parser("export", help="write a store's frames and labels to a file "
                       "(extended XYZ with REF_energy, REF_forces, REF_stress)")
    s.add_argument("store")
    s.add_argument("--format", choices=["extxyz"], default="extxyz")
    s.add_argument("--out", required=True, help="the file to write (.xyz, or .xyz.gz)")
    s.add_argument("--split", choices=["train", "val", "test"], help="only this split")
    s.set_defaults(func=_cmd_export)
    s = sub.add_parser("package", help="write a trained model as one file that loads "
                       "without the training code (and optionally as a torch.export program)")
    s.add_argument("checkpoint", help="a run's checkpoint.pt or best.pt, or a model file")
    s.add_argument("--out", required=True, help="the model file to write (e.g. model.pt)")
    s.add_argument("--program", help="also write the model as a torch.export program to "
                   "this file (its name ends in .pt2)")
    s.add_argument("--weights", choices=["ema", "raw"], help="which weights of a training "
                   "checkpoint.pt (default: those validation used, the EMA's where training "
                   "kept one)")
    s.add_argument("--dtype", choices=["float32", "float64"], help="the dtype of the "
                   "weights written and of the program (default: the checkpoint's)")
    s.set_defaults(func=_cmd_package)
    s = sub.add_parser("run", formatter_class=raw,
                       help="build, train and evaluate the experiments of pipelines.yaml",
                       epilog=pipeline_keys)
    s.add_argument("pipeline")
    s.add_argument("--experiment")
    _set_option(s, "experiments.mace-small.train.lr=0.01")
    s.set_defaults(func=_cmd_run)
    _logging_options(p, sub)
    return p


def _logging_options(p: argparse.ArgumentParser, sub) -> None:
    """``--quiet`` (warnings only, no progress bar) and ``--verbose`` (debug messages too),
    given before or after the command."""
    for each, default in ((p, False), *((s, argparse.SUPPRESS) for s in sub.choices.values())):
        group = each.add_mutually_exclusive_group()
        group.add_argument("--quiet", action="store_true", default=default,
                           help="warnings only, and no progress bar")
        group.add_argument("--verbose", action="store_true", default=default,
                           help="debug messages too")


def _error(err: BaseException) -> None:
    """Print ``err`` as the one line ``orbitgraph: error: ...`` on stderr."""
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    print(f"orbitgraph: error: {msg}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command of ``argv`` (default: the program's arguments); returns the exit
    status: 0 done, 1 ``verify`` found a problem or a build process died, 2 a user error
    (:class:`~orbitgraph.errors.OrbitgraphError`, or an ``OSError`` naming a file that
    cannot be opened), 130 interrupted (Ctrl-C), 128 + N a training run stopped by signal N
    after checkpointing (130 SIGINT, 143 SIGTERM; :mod:`orbitgraph.train.interrupts`). Any
    other exception propagates with its traceback: it is a defect, not the user's doing."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parser(keys=any(a in ("-h", "--help") for a in argv)).parse_args(argv)
    from orbitgraph.train.interrupts import Interrupted
    from orbitgraph.train.logs import setup_logging, teardown_logging
    handler = setup_logging(logging.WARNING if args.quiet else
                            logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except OrbitgraphError as err:
        _error(err)
        return 2
    except OSError as err:
        if err.filename is None:  # not a file the user named: a defect, or the system's
            raise
        _error(err)
        return 2
    except BuildProcessError as err:  # not the user's doing: status 1, as a crash
        _error(err)
        return 1
    except Interrupted as err:  # the trainer checkpointed and said where it resumes
        return err.exit_status  # 128 + the signal's number, as if the signal had ended it
    except KeyboardInterrupt:
        print("orbitgraph: interrupted; what was committed is kept (a build's shards, a "
              "training run's checkpoints): the same command resumes", file=sys.stderr)
        return 130  # 128 + SIGINT, as shells report it
    finally:
        teardown_logging(handler)


def run() -> NoReturn:
    """The ``orbitgraph`` program: :func:`main`, then exit with its status. Before exiting,
    every object is frozen out of the garbage collector: the interpreter's teardown would
    otherwise traverse them all (0.3-0.4 s with numba's kernels loaded, against 0.04 s) to
    collect what the operating system reclaims anyway; every command has closed its files
    by then."""
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:  # stdout's reader left (`| head -1`): Python's documented recipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 1
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    run()
