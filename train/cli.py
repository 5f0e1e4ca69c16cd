"""The ``orbitgraph`` command: ``build``, ``verify``, ``info``, ``train``, ``evaluate``, ``run``.

Every error a user can cause (missing file, bad YAML, unknown preset, an incompatible
store) is printed as one line, ``orbitgraph: error: ...``, with exit code 2.
"""
from __future__ import annotations

import argparse
import sys

from preprocess.store.manifest import StoreError
from preprocess.store.params import GraphParams


class UserError(Exception):
    """An error in what the user asked for; printed as one line."""


def _cmd_info(args) -> int:
    from preprocess.commands import info
    print(info(args.store))
    return 0


def _cmd_verify(args) -> int:
    from preprocess.commands import verify
    ok, text = verify(args.store, sample=args.sample)
    print(text)
    return 0 if ok else 1


def _cmd_build(args) -> int:
    from preprocess.cluster import ClusterConfig
    from preprocess.pipeline import build_store
    from preprocess.store.params import GraphParams

    if args.pipeline is not None:
        from train.pipelines import load_pipelines
        config = load_pipelines(args.pipeline)
        names = [args.store] if args.store else list(config.stores)
        for name in names:
            summary = config.build(name, progress=not args.quiet)
            print(summary.text())
            print(summary.store)
        return 0
    if not (args.source and args.out):
        raise UserError("build needs either a pipelines.yaml or both --source and --out")
    summary = build_store(
        args.source, args.out, source_format=args.format,
        graph=GraphParams(k=args.k, ties=args.ties, tie_tolerance=args.tie_tolerance,
                          cutoff=args.cutoff),
        backend=args.backend, energy_key=args.energy_key, forces_key=args.forces_key,
        stress_key=args.stress_key, virial_key=args.virial_key,
        frames_per_shard=args.frames_per_shard, min_distance=args.min_distance,
        cluster=ClusterConfig.for_scheduler(args.scheduler, args.workers), progress=not args.quiet)
    print(summary.text())
    print(summary.store)
    return 0


def _cmd_train(args) -> int:
    from train.config import TrainConfig
    from train.trainer import Trainer

    cfg: dict = {}  # defaults < the config file < the command line
    if args.config:
        import yaml
        from pathlib import Path
        path = Path(args.config)
        if not path.is_file():
            raise UserError(f"{path}: no such training config file")
        try:
            extra = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        cfg = dict(extra.get("train", extra))
    for key, value in (("device", args.device), ("epochs", args.epochs),
                       ("max_steps", args.max_steps)):
        if value is not None:
            cfg[key] = value
    if args.max_atoms is not None:
        cfg["loader"] = {**(cfg.get("loader") or {}), "max_atoms": args.max_atoms,
                         "max_atoms_by_device": {}}
    trainer = Trainer(args.store, args.model, TrainConfig.from_dict(cfg), args.out)
    result = trainer.fit()
    if trainer.info.is_main:
        print(f"trained {result['steps_this_call']} steps in {result['wall_s']:.1f} s (step "
              f"{result['steps']} of the run); checkpoints, metrics.csv and plots in {args.out}")
    return 0


def _cmd_evaluate(args) -> int:
    from pathlib import Path

    from train.metrics import table
    from train.trainer import evaluate, write_json

    if not Path(args.checkpoint).is_file():
        raise UserError(f"{args.checkpoint}: no such checkpoint")
    metrics = evaluate(args.checkpoint, args.store, split=args.split, device=args.device)
    print(table(metrics))
    out = Path(args.json) if args.json else Path(args.checkpoint).with_name(f"metrics_{args.split}.json")
    write_json(out, metrics)
    print(f"metrics written to {out}")
    return 0


def _cmd_run(args) -> int:
    from train.pipelines import load_pipelines
    config = load_pipelines(args.pipeline)
    config.run([args.experiment] if args.experiment else None, progress=not args.quiet)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orbitgraph", description="Build periodic kNN graph "
                                "stores once; train MACE-family potentials on them.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("build", help="build a graph store (from pipelines.yaml or --source/--out)")
    s.add_argument("pipeline", nargs="?", help="pipelines.yaml; builds its stores")
    s.add_argument("--store", help="with a pipelines.yaml: only this store")
    s.add_argument("--source", help="MPtrj .json/.json.gz, or extxyz file or folder")
    s.add_argument("--format", choices=["mptrj-json", "extxyz"], help="default: from the name")
    s.add_argument("--out", help="store directory")
    s.add_argument("--k", type=int, default=16)
    s.add_argument("--ties", choices=["include", "break"], default="include")
    s.add_argument("--tie-tolerance", type=float, default=GraphParams().tie_tolerance,
                   help="Å (default: %(default)s)")
    s.add_argument("--cutoff", type=float, default=None, help="Å")
    s.add_argument("--backend", choices=["zarr", "arrow"], default="zarr")
    s.add_argument("--energy-key", help="field holding the energy, eV (default: MPtrj "
                   "uncorrected_total_energy; extxyz the one energy or *_energy field present)")
    s.add_argument("--forces-key", help="per-atom field holding the forces, eV/Å (default: "
                   "MPtrj force; extxyz the one forces or *_forces column present)")
    s.add_argument("--stress-key", help="field holding the stress, eV/Å³ with ASE's sign "
                   "(MPtrj: stress, in kBar); naming it makes it required in every frame")
    s.add_argument("--virial-key", help="extxyz field holding the virial, eV; stored as the "
                   "stress -virial / V")
    s.add_argument("--frames-per-shard", type=int, default=2000)
    s.add_argument("--min-distance", type=float, default=0.5,
                   help="Å; records with closer atoms are quarantined")
    s.add_argument("--scheduler", help="'synchronous', or a Dask scheduler address "
                   "(default: a LocalCluster sized to this machine)")
    s.add_argument("--workers", type=int, help="LocalCluster worker processes")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_build)
    s = sub.add_parser("info", help="summarise a store's manifest")
    s.add_argument("store")
    s.set_defaults(func=_cmd_info)
    s = sub.add_parser("verify", help="check checksums, structure and a sample of graphs")
    s.add_argument("store")
    s.add_argument("--sample", type=int, default=64, help="graphs to rebuild and compare")
    s.set_defaults(func=_cmd_verify)
    s = sub.add_parser("train", help="train a potential on a store")
    s.add_argument("--store", required=True)
    s.add_argument("--model", required=True, help="preset (mace, sevennet, invariant) or YAML")
    s.add_argument("--out", required=True, help="run directory (resumes if it has a checkpoint)")
    s.add_argument("--epochs", type=int, help="train to this many epochs (a finished run "
                   "continues to a larger number)")
    s.add_argument("--max-steps", type=int, help="train to this many steps (overrides --epochs)")
    s.add_argument("--device", help="cpu (default), cuda or cuda:N")
    s.add_argument("--max-atoms", type=int, help="atoms per batch on this device (overrides "
                   "loader.max_atoms and loader.max_atoms_by_device)")
    s.add_argument("--config", help="YAML with training settings (the train: section)")
    s.set_defaults(func=_cmd_train)
    s = sub.add_parser("evaluate", help="metrics of a checkpoint on a split of a store")
    s.add_argument("checkpoint")
    s.add_argument("--store", required=True)
    s.add_argument("--split", default="test", choices=["train", "val", "test"])
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", help="where to write the metrics (default: beside the checkpoint)")
    s.set_defaults(func=_cmd_evaluate)
    s = sub.add_parser("run", help="build, train and evaluate the experiments of pipelines.yaml")
    s.add_argument("pipeline")
    s.add_argument("--experiment")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, StoreError, FileNotFoundError, ValueError, KeyError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"orbitgraph: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
