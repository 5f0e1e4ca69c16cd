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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orbitgraph", description="Build periodic kNN graph "
                                "stores once; train MACE-family potentials on them.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
