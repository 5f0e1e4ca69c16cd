"""The graph's parameters.

:class:`GraphParams` is what determines a graph (see :mod:`orbitgraph.preprocess.graph`):
declared and checked once here, and handed as one object from the configuration (the
``graph`` section of a store, ``orbitgraph build --k/--ties/--tie-tolerance/--cutoff``)
through the build to the kernel. It also holds the rule's derived numbers on the distance
grid (:attr:`GraphParams.q_tolerance`).

Graphs built with some parameters contain the graphs of others with fewer neighbours or
a shorter cutoff (:meth:`GraphParams.can_serve`): those are filtered at load time instead
of being built again.
"""
from __future__ import annotations

from typing import Literal

from orbitgraph.preprocess.distance_grid import quantise
from pydantic import Field, model_validator

from orbitgraph.config import Config, ConfigError

DEFAULT_K = 16
# Å. Any tolerance keeps symmetry-equivalent neighbours together (fairchem uses 0.01 Å for
# degenerate neighbours); 0.5 Å also keeps every candidate within the default model's
# adaptive rank envelope (model.radial.AdaptiveRankEnvelope, width 0.5 Å), whose energy is
# then C² in the positions. It costs ~33 % more edges than 0.01 Å on MPtrj-like frames
# (21.7 instead of 16.3 per atom on the shared sample; 0.25 Å: 19.1).
DEFAULT_TIE_TOLERANCE = 0.5
TIES = ("include", "break")


class GraphParams(Config):
    """How the graphs are built (see :mod:`orbitgraph.preprocess.graph`)."""

    section = "graph"

    k: int = Field(DEFAULT_K, ge=1, description="neighbours kept per atom")
    ties: Literal[TIES] = Field("include", description="include: every candidate within "
                                "tie_tolerance of the k-th distance is kept too; break: "
                                "exactly k, ties broken by index")
    tie_tolerance: float = Field(DEFAULT_TIE_TOLERANCE, ge=0, description="Å; candidates "
                                 "this close to the k-th distance are ties (the adaptive "
                                 "rank envelope needs >= its width)")
    cutoff: float | None = Field(None, gt=0, description="Å; drop neighbours farther than "
                                 "this (null: none)")

    @model_validator(mode="before")
    @classmethod
    def _ties_first(cls, data):
        if isinstance(data, dict) and data.get("ties", "include") not in TIES:
            raise ValueError(f"ties must be 'include' or 'break', got {data['ties']!r}")
        return data

    @property
    def include_ties(self) -> bool:
        return self.ties == "include"

    @property
    def q_tolerance(self) -> int:
        """The tie tolerance in steps of the distance grid
        (:func:`orbitgraph.preprocess.distance_grid.quantise` of ``tie_tolerance``)."""
        return int(quantise(self.tie_tolerance))

    def can_serve(self, wanted: "GraphParams") -> bool:
        """Whether graphs built with these parameters contain the graphs ``wanted`` asks for,
        so that the loader can filter them at load time instead of rebuilding.

        True when the tie rule and tolerance match, ``wanted.k <= self.k`` and the cutoff
        can only drop edges.
        """
        if (self.ties, self.tie_tolerance) != (wanted.ties, wanted.tie_tolerance):
            return False
        if wanted.k > self.k:
            return False
        if self.cutoff is not None and (wanted.cutoff is None or wanted.cutoff > self.cutoff):
            return False
        return True


DEFAULT_GRAPH = GraphParams()


def resolve_graph_params(params: GraphParams | None = None, **overrides) -> GraphParams:
    """``params`` (default: :class:`GraphParams` ``()``) with keyword ``overrides`` of its
    fields (``k``, ``ties``, ``tie_tolerance``, ``cutoff``) applied: what the graph
    functions do with their arguments.

    Raises
    ------
    TypeError
        An override that is no field of GraphParams.
    ValueError
        A value GraphParams refuses, named as the keyword argument it is:
        ``k must be an integer >= 1, got 0``.
    """
    base = DEFAULT_GRAPH if params is None else params
    if not overrides:
        return base
    unknown = sorted(set(overrides) - set(GraphParams.model_fields))
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r} (graph parameters: "
                        f"{', '.join(GraphParams.model_fields)})")
    try:
        return GraphParams.from_dict({**base.to_dict(), **overrides}, where="")
    except ConfigError as err:
        raise ValueError(str(err).replace(": expected ", " must be ", 1)) from None
