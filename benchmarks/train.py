"""Training throughput of the mace preset on the shared sample: steps/s, frames/s, and how
long each step waits for data vs computes.

usage: python benchmarks/train.py [--device cuda] [--steps 30] [--channels 64]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, fresh, require_shared, sample_store  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--sh-l-max", type=int, default=3)
    ap.add_argument("--max-atoms", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--precision", default="float32")
    args = ap.parse_args()
    require_shared()
    import numpy as np
    import torch

    from orbitgraph.train.config import TrainConfig
    from orbitgraph.train.loader import LoaderConfig, make_loader
    from orbitgraph.train.trainer import Trainer

    out = sample_store("store_train")
    cfg = TrainConfig(max_steps=args.steps, device=args.device, precision=args.precision,
                      loader=LoaderConfig(max_atoms=args.max_atoms, num_workers=args.workers,
                                          pin_memory=args.device != "cpu"),
                      plots=False, tensorboard=False, checkpoint_every=10**9, log_every=10**9)
    model = {"preset": "mace", "channels": args.channels, "sh_l_max": args.sh_l_max}
    trainer = Trainer(out, model, cfg, fresh(OUT / "train_run"))
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    wait, compute, frames = [], [], 0
    loader = iter(make_loader(trainer.train_set, cfg.loader, 0, graph=trainer.graph))
    for step in range(args.steps):
        t0 = time.perf_counter()
        batch = next(loader, None)
        if batch is None:
            loader = iter(make_loader(trainer.train_set, cfg.loader, step, graph=trainer.graph))
            batch = next(loader)
        batch = batch.to(trainer.device, trainer.dtype, non_blocking=True)
        sync()
        t1 = time.perf_counter()
        trainer.train_step(batch)
        sync()
        t2 = time.perf_counter()
        if step >= 2:  # warm-up steps excluded
            wait.append(t1 - t0)
            compute.append(t2 - t1)
            frames += batch.n_frames
    total = sum(wait) + sum(compute)
    print(f"mace preset, channels {args.channels}, sh_l_max {args.sh_l_max}, {args.precision}, "
          f"{args.device}: {len(compute) / total:.2f} steps/s, {frames / total:.1f} frames/s; "
          f"median per step: compute {np.median(compute) * 1e3:.0f} ms, data wait "
          f"{np.median(wait) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
