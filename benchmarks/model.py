"""Forward + backward (energy and forces) time per batch: the mace preset against
mace-torch's MACE, like for like, on the same MPtrj-like frames, in one run.

usage: python benchmarks/model.py [--device cpu|cuda] [--channels 64] [--repeats 10]
           [--mace-cueq]

Like for like: the same channels, hidden irreps (0e + 1o), max_ell, correlation, layers,
8 Bessel functions, polynomial envelope, cutoff, radial MLP and readout MLP; the mace preset
as users run it (its default rank envelope, on the store's graphs); and matched parameter
counts: MACE's species-dependent weights are per element (one row per element of the batch),
orbitgraph's are a projection of a species embedding, whose width is set to the number of
elements less one so that both have as many species weights (``--species-dim`` overrides).
Both counts are printed. float32.

mace-torch runs in its own virtual environment (see benchmarks/_mace.py), fed the same
batch through an .npz file; ``--mace-cueq`` converts its model to the cuEquivariance
backend (CUDA, and cuequivariance-torch installed in that venv).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mace import run_mace  # noqa: E402  (before _common drops this folder)

# isort: split
from _common import OUT, require_shared, sample_store  # noqa: E402

MACE_SCRIPT = r'''
import json, sys, time, numpy as np, torch
from e3nn import o3
from mace import modules
args = json.loads(sys.argv[1]); d = np.load(args["npz"])
torch.set_default_dtype(torch.float32)
dev = torch.device(args["device"])
z_table = sorted(set(d["numbers"].tolist()))
idx = {z: i for i, z in enumerate(z_table)}
one_hot = torch.nn.functional.one_hot(torch.tensor([idx[z] for z in d["numbers"]]),
                                      len(z_table)).float()
model = modules.MACE(r_max=args["cutoff"], num_bessel=8, num_polynomial_cutoff=5,
    max_ell=args["sh_l_max"],
    interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
    interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
    num_interactions=2, num_elements=len(z_table),
    hidden_irreps=o3.Irreps(f"{args['channels']}x0e + {args['channels']}x1o"),
    MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.zeros(len(z_table)), avg_num_neighbors=16.0,
    atomic_numbers=z_table, correlation=args["correlation"], gate=torch.nn.functional.silu,
    radial_MLP=[64, 64]).to(dev)
params = sum(p.numel() for p in model.parameters())
if args["cueq"]:
    try:
        import cuequivariance_torch  # noqa: F401
    except ImportError:
        print(json.dumps(
            {"skipped": "cuequivariance-torch is not installed in the mace-torch venv"}))
        sys.exit(0)
    from mace.cli.convert_e3nn_cueq import run as to_cueq
    model = to_cueq(model, device=args["device"])
batch_index = torch.from_numpy(d["batch"]).long()
cell = torch.from_numpy(d["cell"]).float()
centers = torch.from_numpy(d["centers"]).long()
unit_shifts = torch.from_numpy(d["unit_shifts"]).float()
shifts = torch.einsum("ei,eij->ej", unit_shifts, cell[batch_index[centers]])  # Å
data = {"positions": torch.from_numpy(d["positions"]).float(), "node_attrs": one_hot,
        "edge_index": torch.stack([torch.from_numpy(d["neighbors"]).long(), centers]),
        "shifts": shifts, "unit_shifts": unit_shifts, "cell": cell.reshape(-1, 3),
        "batch": batch_index,
        "ptr": torch.from_numpy(np.concatenate([[0], np.cumsum(d["n_atoms"])])).long(),
        "weight": torch.ones(len(d["n_atoms"])), "energy_weight": torch.ones(len(d["n_atoms"])),
        "forces_weight": torch.ones(len(d["n_atoms"])),
        "head": torch.zeros(len(d["n_atoms"])).long()}
data = {k: v.to(dev) for k, v in data.items()}
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
times = []
for r in range(args["repeats"] + 2):
    sync(); t0 = time.perf_counter()
    out = model(data, training=True, compute_force=True)
    (out["energy"].sum() + out["forces"].pow(2).sum()).backward()
    sync(); times.append(time.perf_counter() - t0)
print(json.dumps({"median_s": float(np.median(times[2:])), "params": params}))
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--sh-l-max", type=int, default=3)
    ap.add_argument("--correlation", type=int, default=3)
    ap.add_argument("--cutoff", type=float, default=6.0, help="Å")
    ap.add_argument("--species-dim", type=int, help="default: the batch's elements less one")
    ap.add_argument("--max-atoms", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--mace-cueq", action="store_true",
                    help="mace-torch with its cuEquivariance backend (CUDA)")
    args = ap.parse_args()
    require_shared()
    import numpy as np
    import torch

    from orbitgraph.model import build_model
    from orbitgraph.preprocess.store import open_store
    from orbitgraph.train.loader import LoaderConfig, make_loader

    store = open_store(sample_store("store_model", frames_per_shard=200))
    batch = next(iter(make_loader(store, LoaderConfig(max_atoms=args.max_atoms, seed=3))))
    npz = OUT / "model_batch.npz"
    np.savez(npz, **{k: getattr(batch, k).numpy() for k in (
        "numbers", "positions", "cell", "batch", "n_atoms", "centers", "neighbors", "unit_shifts")})
    elements = len(set(batch.numbers.tolist()))
    species_dim = args.species_dim or max(1, elements - 1)
    print(f"batch: {batch.n_frames} frames, {batch.positions.shape[0]} atoms, {elements} "
          f"elements, {batch.n_edges} edges (k = {store.manifest.graph.k}, ties within "
          f"{store.manifest.graph.tie_tolerance} Å); channels {args.channels}, max_ell "
          f"{args.sh_l_max}, L=1, correlation {args.correlation}, float32, {args.device}")
    dev = torch.device(args.device)
    model = build_model({"preset": "mace", "channels": args.channels, "sh_l_max": args.sh_l_max,
                         "hidden_l_max": 1, "correlation": args.correlation, "num_radial": 8,
                         "cutoff": args.cutoff, "radial_mlp": [64, 64], "readout_mlp": [16],
                         "species_dim": species_dim, "k": store.manifest.graph.k,
                         "atomic_energies": "least_squares"},  # the manifest's E0s
                        store.manifest.statistics).to(dev, torch.float32)
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
    ours_params = sum(p.numel() for p in model.parameters())
    print(f"orbitgraph mace preset ({model.config.rank_envelope} rank envelope, species "
          f"embedding {species_dim} wide): {ours * 1e3:8.1f} ms per forward+backward, "
          f"{ours_params:,} parameters")
    theirs = json.loads(run_mace(MACE_SCRIPT, json.dumps({
        "npz": str(npz), "device": args.device, "channels": args.channels,
        "sh_l_max": args.sh_l_max, "correlation": args.correlation, "cutoff": args.cutoff,
        "repeats": args.repeats, "cueq": args.mace_cueq})).strip().splitlines()[-1])
    if "skipped" in theirs:
        print(f"mace-torch (cuEquivariance): skipped, {theirs['skipped']}")
        return
    backend = "cuEquivariance" if args.mace_cueq else "e3nn"
    print(f"mace-torch MACE ({backend}, per-element weights for {elements} elements): "
          f"{theirs['median_s'] * 1e3:8.1f} ms per forward+backward, {theirs['params']:,} "
          f"parameters")
    print(f"ratio (mace-torch time / orbitgraph time): {theirs['median_s'] / ours:.2f}; "
          f"parameters {ours_params / theirs['params']:.2f}x mace-torch's")


if __name__ == "__main__":
    main()
