"""Reduced precision: bf16 autocast and TF32 training steps keep every length exact, and
float32 keeps its precision far from the origin.

Lengths (strain, positions, edge vectors, d_{k+1}) and the spherical harmonics are computed
outside autocast and without matrix-multiply kernels; the layers after them may run in
bf16 or TF32. On a CPU, TF32 changes nothing (the test then checks that the setting runs);
on a GPU (benchmarks/gpu.sh) it is the real check.

Precision kept: a potential is built in its dtype (E0 and every constant, not float32
numbers converted), a float64 checkpoint reaches the calculator bit for bit, and
calculators of every dtype made from one model coexist without changing it.
"""
from __future__ import annotations

import math
from itertools import chain, product
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from e3nn import o3

from helpers import write_small_mptrj
from orbitgraph.model import Potential, build_model
from orbitgraph.model.geometry import edge_vectors
from orbitgraph.preprocess.build import build_store
from orbitgraph.preprocess.cluster import ClusterConfig
from orbitgraph.preprocess.graph_params import GraphParams
from orbitgraph.preprocess.store import SplitParams
from orbitgraph.train.calculator import OrbitCalculator
from orbitgraph.train.collate import (
    batch_from_structures,
    collate,
    frame_from_structure,
)
from orbitgraph.train.config import TrainConfig
from orbitgraph.train.testing import randomise, structure
from orbitgraph.train.trainer import Trainer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TINY = {
    "mace": {"preset": "mace", "channels": 8, "sh_l_max": 2, "species_dim": 4,
             "radial_mlp": [16], "readout_mlp": [8]},
    "sevennet": {"preset": "sevennet", "channels": 8, "layers": 2, "species_dim": 4,
                 "radial_mlp": [16]},
    "invariant": {"preset": "invariant", "hidden": 16, "species_dim": 4, "final_mlp": [16],
                  "layers": 2},
}
QUIET = dict(log_every=10_000, checkpoint_every=10_000, plots=False, tensorboard=False)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("precision")
    build_store(write_small_mptrj(root / "small.json", frames=12), root / "store",
                frames_per_shard=12, cluster=ClusterConfig(kind="synchronous"), progress=False,
                split=SplitParams(0.0, 0.0, 0))
    return root / "store"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["bf16", "tf32"])
@pytest.mark.parametrize("preset", sorted(TINY))
def test_reduced_precision_steps_keep_lengths_exact(store_path, tmp_path, device, precision,
                                                    preset):
    trainer = Trainer(store_path, TINY[preset], TrainConfig(
        precision=precision, device=device, max_steps=1, **QUIET), tmp_path)
    randomise(trainer.model)  # readouts start at zero: make the forces non-trivial
    network = trainer.model.network
    seen = {}

    def keep(name, value):
        seen.setdefault(name, value.detach())  # the first call: the training step's forward

    network.register_forward_pre_hook(lambda m, args: keep("vectors", args[1]))
    network.sh.register_forward_hook(lambda m, args, out: keep("sh", out))
    g = trainer.graph
    frames = []
    for seed, n in ((1, 5), (2, 8)):  # rattled triclinic crystals
        cell, pos, numbers = structure(seed, n)
        frames.append(frame_from_structure(cell, pos, numbers, g, energy=-3.0 * n,
                                           forces=np.zeros((n, 3)), stress=np.zeros((3, 3))))
    batch = collate(frames, k=g.k)
    low = batch.to(trainer.device, trainer.dtype)
    assert math.isfinite(trainer.train_step(low))
    # the lengths the network received, against float64 on the CPU: float32 rounding only
    # (bf16 autocast around them was off by ~1e-2 Å)
    reference = edge_vectors(batch.positions, batch.cell, batch)
    assert seen["vectors"].dtype == torch.float32
    assert float((seen["vectors"].double().cpu() - reference).abs().max()) < 2e-5
    sh = o3.spherical_harmonics(network.sh.irreps_out, reference, normalize=True,
                                normalization="component")
    assert float((seen["sh"].double().cpu() - sh).abs().max()) < 2e-5
    # forces of the same weights, in this precision against plain float32
    model = trainer.model
    plain = model(low)["forces"].detach()
    with trainer.precision_context():
        reduced = model(low)["forces"].detach()
    assert reduced.dtype == torch.float32
    scale = float(plain.abs().max())
    assert scale > 0 and float((reduced - plain).abs().max()) < 0.1 * scale


@pytest.mark.parametrize("preset", sorted(TINY))
def test_float32_far_from_the_origin(preset):
    """A frame 3,000 Å from the origin gets in float32 the forces it gets at the origin
    (positions enter relative to their frame)."""
    torch.manual_seed(0)
    model = randomise(build_model(TINY[preset])).double()
    cell, pos, numbers = structure(3, 6)
    far = pos + np.array([1000.0, -2000.0, 3000.0])
    near_b, far_b = (batch_from_structures([(cell, p, numbers)], GraphParams(k=16))
                     for p in (pos, far))
    reference = model(near_b)["forces"]
    model = model.float()
    for b in (near_b, far_b):
        forces = model(b.to(dtype=torch.float32))["forces"].double()
        assert float((forces - reference).abs().max()) < 1e-4 * float(reference.abs().max())


# ----------------------------------------------- calculators and checkpoints keep precision
FLOATS = (torch.float32, torch.float64)
GRAPH = GraphParams(k=8, tie_tolerance=0.5)  # serves the adaptive rank envelope
E0_DIGITS = {1: -1.2345678901234567, 8: -4.934567891234567, 14: -5.423123456789123,
             26: -8.312345678901234}  # none of them a float32 number


def caller_model(dtype: torch.dtype) -> Potential:
    """A user's model in ``dtype`` (made as users convert one: ``.to(dtype)``)."""
    torch.manual_seed(0)
    return randomise(build_model({**TINY["mace"], "atomic_energies": E0_DIGITS})).to(dtype)


def tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model``, persistent or not, by name."""
    return dict(chain(model.named_parameters(), model.named_buffers()))


def calculator_results(calc, cell, positions, numbers) -> dict[str, np.ndarray]:
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
    atoms.calc = calc
    return {"energy": np.array(atoms.get_potential_energy()), "forces": atoms.get_forces(),
            "stress": atoms.get_stress()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model_dtype", FLOATS, ids=str)
def test_calculators_of_every_dtype_pair_coexist(model_dtype, device):
    """Two calculators made one after the other from one model, for every pair of dtypes:
    both still work (the first one after the second was made) and agree, each in its own
    dtype and on its device, and the caller's model keeps its dtype, device and weights."""
    model = caller_model(model_dtype)
    before = {name: t.clone() for name, t in tensors(model).items()}
    cell, positions, numbers = structure(4, 6)
    reference = None
    for first, second in product(FLOATS, FLOATS):
        calcs = [OrbitCalculator(model, GRAPH, device=device, dtype=dtype)
                 for dtype in (first, second)]
        for calc, dtype in zip(calcs, (first, second), strict=True):
            out = calculator_results(calc, cell, positions, numbers)
            reference = reference or out
            assert {(t.dtype, t.device.type) for t in tensors(calc.model).values()
                    if t.is_floating_point()} == {(dtype, device)}
            # a copy only where the model must be converted
            assert (calc.model is model) == (dtype == model_dtype and device == "cpu")
            for key, value in out.items():
                np.testing.assert_allclose(value, reference[key], rtol=1e-5, atol=1e-5,
                                           err_msg=f"{key}, {dtype} after {first}, {second}")
    for name, t in tensors(model).items():
        assert t.dtype == before[name].dtype and t.device.type == "cpu", name
        assert torch.equal(t, before[name]), name


def test_float64_checkpoint_round_trips_bit_for_bit(store_path, tmp_path):
    """A float64 training run's best.pt, loaded by the calculator (float64): every
    parameter and buffer, and the energy, forces and stress, bit for bit those of the
    trained model."""
    trainer = Trainer(store_path, TINY["mace"], TrainConfig(
        precision="float64", max_steps=2, **QUIET), tmp_path)
    trainer.fit()
    trained = trainer.inference_model()
    calc = OrbitCalculator.from_checkpoint(tmp_path / "best.pt")
    loaded = tensors(calc.model)
    for name, t in tensors(trained).items():
        assert loaded[name].dtype == t.dtype, name
        assert torch.equal(loaded[name], t), name
    cell, positions, _ = structure(5, 7)
    numbers = np.array([26, 29, 29, 26, 29, 26, 29])  # elements of the training frames
    batch = batch_from_structures([(cell, positions, numbers)], trainer.graph)
    direct = {key: t.detach() for key, t in trained(batch.to(dtype=torch.float64)).items()}
    out = calculator_results(calc, cell, positions, numbers)
    assert float(out["energy"]) == float(direct["energy"][0])
    assert np.array_equal(out["forces"], direct["forces"].numpy())
    s = direct["stress"][0].numpy()
    assert np.array_equal(out["stress"], s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]])


@pytest.mark.parametrize("preset", sorted(TINY))
def test_float64_training_builds_every_constant_in_float64(store_path, tmp_path, preset):
    """In a float64 run, E0 (the store's least-squares values, exactly), the scale, the
    radial frequencies and centres and the coupling coefficients are those of a model built
    in float64, not float32 numbers converted."""
    least_squares = {**TINY[preset], "atomic_energies": "least_squares"}  # the manifest's E0s
    trainer = Trainer(store_path, least_squares, TrainConfig(precision="float64", max_steps=1,
                                                             **QUIET), tmp_path)
    e0 = trainer.model.scale_shift.e0
    assert e0.dtype == torch.float64
    for z, value in trainer.store.manifest.statistics["atomic_energies_eV"].items():
        assert float(e0[int(z)]) == float(value), z
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        reference = tensors(build_model(trainer.model.config))
    finally:
        torch.set_default_dtype(old)
    for name, t in tensors(trainer.model).items():
        if not t.requires_grad:  # buffers and fixed parameters: no random initialisation
            assert t.dtype == reference[name].dtype, name
            assert torch.equal(t, reference[name]), name
    assert float(trainer.model.scale_shift.scale[0]) == trainer.model.config.scale


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_potential_is_built_in_its_dtype(dtype):
    """``build_model(..., dtype=)``: every parameter and buffer in ``dtype`` whatever
    torch's default, and E0 the configured value rounded once, to ``dtype``."""
    model = build_model({**TINY["mace"], "atomic_energies": E0_DIGITS}, dtype=dtype)
    assert {t.dtype for t in tensors(model).values() if t.is_floating_point()} == {dtype}
    for z, value in E0_DIGITS.items():
        assert model.scale_shift.e0[z] == torch.tensor(value, dtype=dtype), z
    assert torch.get_default_dtype() == torch.float32  # built without changing it for good
