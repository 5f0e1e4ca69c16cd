"""orbitgraph: periodic k-nearest-neighbour crystal graphs built once, verified, stored in
shards, and MACE-family potentials trained on them.

The namespace has three rooms, installed from the folders at the repository's root, and
imports run one way (see docs/architecture.md)::

    orbitgraph.preprocess   sources, the graph and the store      (imports neither of the others)
    orbitgraph.model        the batch type, blocks and potentials (imports neither of the others)
    orbitgraph.train        loader, trainer, calculator, CLI      (may import both)

This root package holds what every room needs (:mod:`orbitgraph.config`, the typed-config
base; :mod:`orbitgraph.errors`, the user-error types; :mod:`orbitgraph.units`) and gives
the few public names below. They are loaded on first use, so that ``import orbitgraph``
(and a build process, which never needs torch) stays cheap::

    knn_graph         the periodic k-NN graph of one structure (numpy, Å)
    GraphParams       the graph's parameters (k, ties, tie tolerance, cutoff)
    build_store       build a graph store from a source file
    open_store        read a store (map-style frames, subsets, the index)
    build_model       a potential from a preset name, YAML file, dict or config
    load_model        a potential from a model file, checkpoint or exported program
    OrbitCalculator   the ASE calculator
    Trainer           the training loop (``orbitgraph train`` drives it)
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "knn_graph": "orbitgraph.preprocess.graph",
    "GraphParams": "orbitgraph.preprocess.graph_params",
    "build_store": "orbitgraph.preprocess.build",
    "open_store": "orbitgraph.preprocess.store.reader",
    "build_model": "orbitgraph.model",
    "load_model": "orbitgraph.model",
    "OrbitCalculator": "orbitgraph.train.calculator",
    "Trainer": "orbitgraph.train.trainer",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str):
    """PEP 562: import a public name's module on first access."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'orbitgraph' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
