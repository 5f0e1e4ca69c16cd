"""The graph's parameters, and the question whether graphs built with some can serve a model.

:class:`GraphParams` is what determines a graph (see :mod:`orbitgraph.preprocess.graph`):
declared and checked once here, and handed as one object from the configuration (the
``graph`` section of a store, ``orbitgraph build --k/--ties/--tie-tolerance/--cutoff``)
through the build to the kernel. It also holds the rule's derived numbers on the distance
grid (:attr:`GraphParams.q_tolerance`).

Graphs built with some parameters contain the graphs of others with fewer neighbours or
a shorter cutoff (:meth:`GraphParams.can_serve`): those are filtered at load time
(:mod:`orbitgraph.preprocess.graph_filter`) instead of being built again.
:func:`graph_for_model` answers, once for the trainer, the pipelines and the calculator,
which graphs a model sees and whether the stored ones can serve it.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from orbitgraph.config import Config, ConfigError
from orbitgraph.errors import GraphMismatchError
from orbitgraph.preprocess.distance_grid import quantise

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

    def check_can_serve(self, wanted: "GraphParams") -> None:
        """Raise :class:`GraphMismatchError` unless :meth:`can_serve` ``wanted``."""
        if not self.can_serve(wanted):
            raise GraphMismatchError(
                f"the store's graphs (k={self.k}, ties={self.ties}, tie_tolerance="
                f"{self.tie_tolerance} Å, cutoff={self.cutoff}) cannot serve k={wanted.k}, "
                f"ties={wanted.ties}, tie_tolerance={wanted.tie_tolerance} Å, cutoff="
                f"{wanted.cutoff}; build a store with these graph parameters")


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
        raise ConfigError(str(err).replace(": expected ", " must be ", 1), err.path) from None


def graph_for_model(stored: GraphParams, k: int | None, rank_envelope: str,
                    rank_envelope_width: float) -> GraphParams:
    """The graphs a model sees when it reads graphs built with ``stored``: those, with the
    model's ``k`` (None: the stored k), filtered at load time where it is smaller.

    ``rank_envelope`` and ``rank_envelope_width`` (Å) are the model's settings of those names
    (:mod:`orbitgraph.model.radial`): the adaptive envelope weighs every candidate within its
    width of the k-th, so the graphs must keep them all (``ties: include`` with
    ``tie_tolerance >= width``).

    Raises
    ------
    GraphMismatchError
        The model needs more neighbours than were built (``model_key`` "k"), or its rank
        envelope needs candidates the graphs do not keep (``model_key`` "rank_envelope").
    """
    wanted = stored if k is None or k == stored.k else stored.model_copy(update={"k": k})
    if not stored.can_serve(wanted):
        raise GraphMismatchError(f"the model needs k={wanted.k}, the graphs were built with "
                                 f"k={stored.k}; build a store with k >= {wanted.k}", "k")
    if rank_envelope == "adaptive" and (not wanted.include_ties
                                        or wanted.tie_tolerance < rank_envelope_width):
        width = rank_envelope_width
        raise GraphMismatchError(
            f"model.rank_envelope 'adaptive' (width {width} Å) needs graphs that keep every "
            f"candidate within {width} Å of the k-th (graph ties: include, tie_tolerance >= "
            f"{width}); these graphs have ties: {wanted.ties}, tie_tolerance: "
            f"{wanted.tie_tolerance} Å. Build a store with a larger tie_tolerance, or set "
            "model.rank_envelope to 'next'", "rank_envelope")
    return wanted
