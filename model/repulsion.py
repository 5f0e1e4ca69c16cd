"""Short-range pair repulsion: the ZBL universal screened nuclear potential.

    V(r) = k_e Z_i Z_j / r · φ(r / a),    a = 0.8854 a₀ / (Z_i^0.23 + Z_j^0.23)
    φ(x) = 0.18175 e^(−3.19980 x) + 0.50986 e^(−0.94229 x) + 0.28022 e^(−0.40290 x)
           + 0.02817 e^(−0.20162 x)

with k_e = e²/4πε₀ = 14.399645 eV·Å and a₀ = 0.529177 Å (J. F. Ziegler, J. P. Biersack and
U. Littmark, *The Stopping and Range of Ions in Solids*, Pergamon, New York, 1985: the
"universal" screening function, fitted to the repulsion of 522 atom pairs; coefficients to
the five digits that LAMMPS's ``pair_style zbl`` uses, so that φ(0) = 1). It is the
repulsion of two nuclei screened by their electrons, right at short range where a
potential trained on near-equilibrium data has seen no pair: with it, atoms pushed together
(high-temperature MD, radiation damage, a bad relaxation step) repel instead of fusing.

Each pair's repulsion is switched off smoothly between 0 and r_c = R_cov(Z_i) + R_cov(Z_j)
(covalent radii of Cordero et al. 2008, from ASE) by the polynomial envelope of order 6
(:class:`~orbitgraph.model.radial.PolynomialEnvelope` on r / r_c: value, slope and
curvature vanish at r_c), as mace-torch's ``pair_repulsion`` does. Energy, forces and
stress are continuous, and forces and stress are its exact derivatives (autograd through the
potential's strained positions, as for the network).

Which pairs it sees on a k-NN graph: every edge of the graph, each weighted by the model's
rank envelope (the weight each message carries; :meth:`EdgeEnvelope.rank_weights`). The
weight is exactly 1 for every neighbour well inside the k nearest, which is where every
pair within its covalent-radius sum lies unless k atoms crowd that close; and with it the
repulsion, like the network, stays continuous when neighbours swap rank or enter and leave
the graph. Without the weight, in a structure compressed until more than k atoms lie within
r_c of one atom, the repulsion would jump when one of them left the graph. The energy of a
directed edge i → j is V(r_ij)/2 on atom i, so a pair seen from both ends counts once.
"""
from __future__ import annotations

import torch
from ase.data import covalent_radii
from torch import nn

from orbitgraph.model.radial import PolynomialEnvelope
from orbitgraph.model.scatter import scatter_sum

COULOMB_EV_A = 14.399645  # e²/(4πε₀), eV·Å
BOHR_A = 0.529177  # a₀, Å
SCREENING_A = 0.8854 * BOHR_A  # the ZBL screening length a = this / (Z_i^0.23 + Z_j^0.23)
PHI_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
PHI_EXPONENTS = (3.19980, 0.94229, 0.40290, 0.20162)
ENVELOPE_ORDER = 6


def zbl_screening(x: torch.Tensor) -> torch.Tensor:
    """φ(x) of the universal screening function; x = r / a (dimensionless), any shape."""
    return sum(c * torch.exp(-e * x) for c, e in zip(PHI_COEFFICIENTS, PHI_EXPONENTS,
                                                      strict=True))


class ZBLRepulsion(nn.Module):
    """Per-atom ZBL repulsion energies (eV) from a graph's edges; no parameters."""

    def __init__(self):
        super().__init__()
        self.register_buffer("covalent_radii", torch.tensor(covalent_radii,
                                                            dtype=torch.get_default_dtype()))
        self.envelope = PolynomialEnvelope(1.0, ENVELOPE_ORDER)

    def pair_energy(self, r: torch.Tensor, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
        """V(r) · envelope(r / r_c), eV: r (E,) Å, z_i and z_j (E,) atomic numbers -> (E,)."""
        zi, zj = z_i.to(r.dtype), z_j.to(r.dtype)
        a = SCREENING_A / (zi.pow(0.23) + zj.pow(0.23))
        r_c = self.covalent_radii[z_i] + self.covalent_radii[z_j]
        coulomb = COULOMB_EV_A * zi * zj / r
        return coulomb * zbl_screening(r / a) * self.envelope(r / r_c)

    def forward(self, r: torch.Tensor, weights: torch.Tensor, numbers: torch.Tensor,
                centers: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
        """Shapes: r (E,) Å, weights (E,) the edges' rank weights, numbers (N,), centers and
        neighbors (E,) -> (N,) eV: half of each edge's weighted pair energy on its centre."""
        pair = self.pair_energy(r, numbers[centers], numbers[neighbors])
        return scatter_sum(0.5 * weights * pair, centers, numbers.shape[0])
