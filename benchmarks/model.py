"""Forward + backward (energy and forces) time per batch: the mace preset against
mace-torch's MACE with the same hyperparameters, on the same MPtrj-like frames, in one run.

usage: python benchmarks/model.py [--device cpu|cuda] [--channels 64] [--repeats 10]

mace-torch pins its own e3nn (0.4.4), so it runs in its own virtual environment under
benchmarks/_out/mace-venv (created on first use: pip install torch==2.13.0 mace-torch), fed
the same batch through an .npz file; e3nn 0.4.4 needs TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
on torch >= 2.6.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, require_shared, sample_store  # noqa: E402

MACE_SCRIPT = r'''
import json, sys, time, numpy as np, torch
from e3nn import o3
from mace import modules
from mace.tools.scatter import scatter_sum
args = json.loads(sys.argv[1]); d = np.load(args["npz"])
torch.set_default_dtype(torch.float32)
dev = torch.device(args["device"])
z_table = sorted(set(d["numbers"].tolist()))
idx = {z: i for i, z in enumerate(z_table)}
one_hot = torch.nn.functional.one_hot(torch.tensor([idx[z] for z in d["numbers"]]), len(z_table)).float()
model = modules.MACE(r_max=args["cutoff"], num_bessel=8, num_polynomial_cutoff=5, max_ell=args["sh_l_max"],
    interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
    interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
    num_interactions=2, num_elements=len(z_table),
    hidden_irreps=o3.Irreps(f"{args['channels']}x0e + {args['channels']}x1o"),
    MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.zeros(len(z_table)), avg_num_neighbors=16.0,
    atomic_numbers=z_table, correlation=args["correlation"], gate=torch.nn.functional.silu).to(dev)
batch_index = torch.from_numpy(d["frame_index"]).long()
cell = torch.from_numpy(d["cell"]).float()
shifts = torch.einsum("ei,eij->ej", torch.from_numpy(d["shifts"]).float(), cell[batch_index[torch.from_numpy(d["centers"]).long()]])
data = {"positions": torch.from_numpy(d["positions"]).float(), "node_attrs": one_hot,
        "edge_index": torch.stack([torch.from_numpy(d["neighbors"]).long(), torch.from_numpy(d["centers"]).long()]),
        "shifts": shifts, "unit_shifts": torch.from_numpy(d["shifts"]).float(), "cell": cell.reshape(-1, 3),
        "batch": batch_index, "ptr": torch.from_numpy(np.concatenate([[0], np.cumsum(d["n_atoms"])])).long(),
        "weight": torch.ones(len(d["n_atoms"])), "energy_weight": torch.ones(len(d["n_atoms"])),
        "forces_weight": torch.ones(len(d["n_atoms"])), "head": torch.zeros(len(d["n_atoms"])).long()}
data = {k: v.to(dev) for k, v in data.items()}
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
times = []
for r in range(args["repeats"] + 2):
    sync(); t0 = time.perf_counter()
    out = model(data, training=True, compute_force=True)
    (out["energy"].sum() + out["forces"].pow(2).sum()).backward()
    sync(); times.append(time.perf_counter() - t0)
print(json.dumps({"median_s": float(np.median(times[2:])), "params": sum(p.numel() for p in model.parameters())}))
'''


def mace_python() -> Path:
    venv = OUT / "mace-venv"
    py = venv / "bin" / "python"
    if not py.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0", "mace-torch"],
                       check=True)
    return py


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--sh-l-max", type=int, default=3)
    ap.add_argument("--correlation", type=int, default=3)
    ap.add_argument("--max-atoms", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    require_shared()
    import numpy as np
    import torch

    from model import build_model
    from train.loader import LoaderConfig, make_loader

    out = sample_store("store_model", frames_per_shard=200)
    from preprocess.store import open_store
    batch = next(iter(make_loader(open_store(out), LoaderConfig(max_atoms=args.max_atoms, seed=3))))
    npz = OUT / "model_batch.npz"
    np.savez(npz, **{k: getattr(batch, k).numpy() for k in (
        "numbers", "positions", "cell", "frame_index", "n_atoms", "centers", "neighbors", "shifts")})
    print(f"batch: {batch.n_frames} frames, {batch.positions.shape[0]} atoms, {batch.n_edges} edges; "
          f"channels {args.channels}, L={args.sh_l_max}, correlation {args.correlation}, float32, "
          f"{args.device}")
    dev = torch.device(args.device)
    model = build_model({"preset": "mace", "channels": args.channels, "sh_l_max": args.sh_l_max,
                         "correlation": args.correlation, "num_radial": 8, "readout_mlp": [16],
                         "rank_envelope": False}).to(dev, torch.float32)
    b = batch.to(dev, torch.float32)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    for _ in range(args.repeats + 2):
        sync()
        t0 = time.perf_counter()
        o = model(b, forces=True, stress=False, training=True)
        (o["energy"].sum() + o["forces"].pow(2).sum()).backward()
        sync()
        times.append(time.perf_counter() - t0)
    ours = float(np.median(times[2:]))
    print(f"orbitgraph mace preset: {ours * 1e3:8.1f} ms per forward+backward "
          f"({sum(p.numel() for p in model.parameters())} parameters)")
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    proc = subprocess.run([str(mace_python()), "-c", MACE_SCRIPT, json.dumps({
        "npz": str(npz), "device": args.device, "channels": args.channels,
        "sh_l_max": args.sh_l_max, "correlation": args.correlation, "cutoff": 6.0,
        "repeats": args.repeats})], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"mace-torch run failed:\n{proc.stderr[-3000:]}")
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"mace-torch MACE:        {theirs['median_s'] * 1e3:8.1f} ms per forward+backward "
          f"({theirs['params']} parameters)")
    print(f"ratio (mace-torch time / orbitgraph time): {theirs['median_s'] / ours:.2f}")


if __name__ == "__main__":
    main()
