"""The species embedding and its projections: elements start near one shared vector, and
the projections are normalised linear maps, so one Adam step changes their output by a
fraction that grows as √width at most (with nn.Linear's parametrisation it grew as the
width, and a wide embedding's training spiked)."""
from __future__ import annotations

import pytest
import torch

from orbitgraph.model.embedding import NormalizedLinear, SpeciesEmbedding, SpeciesProjection


def relative_change_after_one_adam_step(dim: int, lr: float = 5e-3) -> float:
    """Median over 200 atoms of 86 elements of |Δy|/|y|, y the (200, 32) projection of their
    species embedding, after one Adam step on a squared error."""
    torch.manual_seed(0)
    species = SpeciesEmbedding(dim)(torch.randint(1, 87, (200,))).detach()
    projection = SpeciesProjection(dim, 32)
    optimizer = torch.optim.Adam(projection.parameters(), lr=lr)
    before = projection(species).detach()
    ((projection(species) - torch.randn(200, 32)) ** 2).sum().backward()
    optimizer.step()
    change = projection(species).detach() - before
    return (change.norm(dim=-1) / before.norm(dim=-1)).median().item()


def test_one_adam_steps_change_of_the_species_projection_grows_at_most_as_root_width():
    """The embeddings start near one shared vector, so the rows' components are coherent and
    Adam's sign-like step adds up over the width: the normalised map's change grows as
    √width, nn.Linear's as the width."""
    narrow, wide = (relative_change_after_one_adam_step(d) for d in (16, 128))
    # measured: 3.8 % and 9.0 %, 2.3x (nn.Linear: 12.5 % and 93 %, 7.5x; with independent
    # N(0, 1) embeddings 1.40 % and 1.75 %, against nn.Linear's 4.06 % and 15.7 %)
    assert wide < 1.1 * (128 / 16) ** 0.5 * narrow, (narrow, wide)
    assert wide < 0.15, wide


def test_the_normalised_map_starts_distributed_as_nn_linear():
    torch.manual_seed(0)
    x = torch.randn(4096, 64)
    new = NormalizedLinear(64, 256, bias="uniform")
    old = torch.nn.Linear(64, 256)
    std_new, std_old = new(x).std().item(), old(x).std().item()
    assert std_new == pytest.approx(std_old, rel=0.05)
    assert (new.weight.abs() <= 1).all() and new.weight.abs().max() > 0.99
    assert (new.bias.abs() <= 64 ** -0.5).all()
    assert (NormalizedLinear(64, 8).bias == 0).all()  # the species projections' bias
    assert NormalizedLinear(64, 8, bias=None).bias is None
    with pytest.raises(ValueError, match="bias: expected"):
        NormalizedLinear(64, 8, bias="normal")


def test_elements_start_near_one_shared_vector():
    """Every element's embedding starts at one shared random vector plus a small part of
    its own, so what the network learns from one element's forces carries over to the
    others (independent random vectors made every function of the geometry element-specific
    and a few hundred steps on 86 elements learned no forces)."""
    from orbitgraph.model.embedding import PER_ELEMENT_STD
    torch.manual_seed(0)
    rows = SpeciesEmbedding(16).table.weight.detach()[1:87]
    cosine = torch.nn.functional.cosine_similarity(rows[:, None], rows[None], dim=-1)
    assert cosine[~torch.eye(86, dtype=torch.bool)].min() > 0.9
    own = rows - rows.mean(dim=0)
    assert own.std().item() == pytest.approx(PER_ELEMENT_STD, rel=0.2)
    assert own.norm(dim=-1).min() > 0  # the elements are told apart from the start
