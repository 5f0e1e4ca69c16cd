"""The networks of atomic energies a :class:`~orbitgraph.model.potential.Potential` can
hold, by ``ModelConfig.kind``: the MACE family (equivariant) and the invariant toolbox."""
from __future__ import annotations

from orbitgraph.model.equivariant import EquivariantNetwork
from orbitgraph.model.invariant import InvariantNetwork

NETWORKS = {"equivariant": EquivariantNetwork, "invariant": InvariantNetwork}
