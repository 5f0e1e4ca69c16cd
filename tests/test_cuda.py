"""The CUDA subset (skipped without a GPU; benchmarks/gpu.sh runs it): every preset on the
GPU in float64 and float32 against the CPU in float64, torch.compile on the GPU against
eager, and training steps on the GPU. The bf16/TF32 checks of tests/test_precision.py run
on the GPU too."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from orbitgraph.model import build_model
from orbitgraph.preprocess.graph_params import GraphParams
from orbitgraph.train.collate import batch_from_structures
from orbitgraph.train.testing import randomise, structure

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

TINY = {
    "mace": {"preset": "mace", "channels": 16, "sh_l_max": 2, "species_dim": 8,
             "radial_mlp": [32], "readout_mlp": [16]},
    "sevennet": {"preset": "sevennet", "channels": 16, "layers": 2, "species_dim": 8,
                 "radial_mlp": [32]},
    "invariant": {"preset": "invariant", "hidden": 32, "species_dim": 8, "final_mlp": [32],
                  "layers": 2},
}


def batch(seeds=((1, 5), (2, 8), (3, 12))):
    return batch_from_structures([structure(seed, n) for seed, n in seeds], GraphParams(k=16))


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
@pytest.mark.parametrize("preset", sorted(TINY))
def test_gpu_matches_cpu(preset, dtype, rtol):
    torch.manual_seed(0)
    model = randomise(build_model(TINY[preset])).double()
    b = batch()
    ref = model(b)
    gpu = model.to("cuda", dtype)(b.to("cuda", dtype))
    for key in ("energy", "forces", "stress"):
        scale = float(ref[key].abs().max())
        err = float((gpu[key].double().cpu() - ref[key]).abs().max())
        assert err <= rtol * scale + 1e-12, (key, err, scale)


COMPILE_SCRIPT = """
import sys, numpy as np, torch
from orbitgraph.model import build_model
from orbitgraph.preprocess.graph_reference import knn_graph_reference
from orbitgraph.train.collate import collate, frame_from_graph
from orbitgraph.train.testing import randomise, structure
dtype, rtol = {"float64": (torch.float64, 1e-9), "float32": (torch.float32, 1e-4)}[sys.argv[1]]
frames = []
for seed, n in ((1, 5), (2, 8)):
    cell, pos, numbers = structure(seed, n)
    frames.append(frame_from_graph(cell, pos, numbers, knn_graph_reference(cell, pos, k=16)))
b = collate(frames, k=16).to("cuda", dtype)
torch.manual_seed(0)
model = randomise(build_model(%r)).to("cuda", dtype)
eager = model(b)
model.network = torch.compile(model.network, dynamic=True)
out = model(b)
for key in ("energy", "forces", "stress"):
    torch.testing.assert_close(out[key], eager[key], rtol=rtol, atol=rtol)
assert "numba" not in sys.modules, "numba must not be loaded next to torch.compile"
print("compiled == eager")
""" % TINY["mace"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_compiled_network_matches_eager_on_the_gpu(dtype):
    """In a fresh process without numba (see tests/test_model.py)."""
    import subprocess
    import sys
    from pathlib import Path
    proc = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, dtype],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compiled == eager" in proc.stdout


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_training_steps_on_the_gpu(tmp_path, precision):
    from helpers import write_small_mptrj
    from orbitgraph.preprocess.build import build_store
    from orbitgraph.preprocess.cluster import ClusterConfig
    from orbitgraph.preprocess.store import SplitParams
    from orbitgraph.train.config import TrainConfig
    from orbitgraph.train.loader import LoaderConfig
    from orbitgraph.train.trainer import Trainer

    build_store(write_small_mptrj(tmp_path / "s.json", frames=24), tmp_path / "store",
                frames_per_shard=12, cluster=ClusterConfig(kind="synchronous"),
                progress=False, split=SplitParams(0.2, 0.0, 0))
    trainer = Trainer(tmp_path / "store", TINY["mace"], TrainConfig(
        device="cuda", precision=precision, max_steps=3, plots=False, tensorboard=False,
        loader=LoaderConfig(max_atoms=128, pin_memory=True)), tmp_path / "run")
    result = trainer.fit()
    assert result["steps"] == 3
    assert all(math.isfinite(h["train_loss"]) for h in result["history"])
    assert np.isfinite(result["history"][-1]["forces_mae_meV_per_A"])
