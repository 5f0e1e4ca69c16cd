"""The ``orbitgraph`` command: ``build``, ``verify``, ``info``, ``train``, ``evaluate``, ``run``.

Every error a user can cause (missing file, bad YAML, unknown preset, an incompatible
store) is printed as one line, ``orbitgraph: error: ...``, with exit code 2.
"""
from __future__ import annotations

import argparse
import sys

from preprocess.store.manifest import StoreError


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
        backend=args.backend, energy_key=args.energy_key, frames_per_shard=args.frames_per_shard,
        min_distance=args.min_distance,
        cluster=ClusterConfig.for_scheduler(args.scheduler, args.workers), progress=not args.quiet)
    print(summary.text())
    print(summary.store)
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
    s.add_argument("--tie-tolerance", type=float, default=0.01, help="Å")
    s.add_argument("--cutoff", type=float, default=None, help="Å")
    s.add_argument("--backend", choices=["zarr", "arrow"], default="zarr")
    s.add_argument("--energy-key", default="uncorrected_total_energy",
                   choices=["uncorrected_total_energy", "corrected_total_energy"])
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, StoreError, FileNotFoundError, ValueError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"orbitgraph: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
