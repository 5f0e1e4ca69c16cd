"""Data-parallel training: empty batches and ranks that hold unequal numbers of batches.

Every rank takes the busiest rank's number of steps (DDP runs in lockstep); a rank whose
shards are used up takes its steps on an empty batch. Each preset must run forward and
backward on one, and two gloo ranks of unequal batch counts must take the same steps as
one process fed the union of their batches.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import write_small_mptrj
from orbitgraph.model import build_model
from orbitgraph.model.config import PRESETS
from orbitgraph.preprocess.build import build_store
from orbitgraph.preprocess.cluster import ClusterConfig
from orbitgraph.preprocess.store import SplitParams, open_store
from orbitgraph.train.collate import collate
from orbitgraph.train.config import TrainConfig
from orbitgraph.train.loader import LoaderConfig, empty_batch, plan_rank
from orbitgraph.train.trainer import Trainer

# small versions of every preset (the preset's blocks, few channels)
TINY = {
    "mace": {"preset": "mace", "channels": 4, "sh_l_max": 2, "species_dim": 4,
             "radial_mlp": [8], "readout_mlp": [4]},
    "sevennet": {"preset": "sevennet", "channels": 4, "layers": 2, "species_dim": 4,
                 "radial_mlp": [8]},
    "invariant": {"preset": "invariant", "hidden": 8, "species_dim": 4, "final_mlp": [8],
                  "layers": 2, "num_radial": 8},
}
# other blocks a configuration can choose, each on an empty batch too
VARIANTS = {
    "tensor_square": {**TINY["sevennet"], "self_interaction": "tensor_square"},
    "linear+softmax": {**TINY["sevennet"], "self_interaction": "linear",
                       "aggregation": "softmax"},
    "mace+sigmoid+features": {**TINY["mace"], "aggregation": "sigmoid",
                              "message_weights": "radial+species+features"},
    "invariant+softmax": {**TINY["invariant"], "attention": "softmax"},
    "invariant+none": {**TINY["invariant"], "attention": "none"},
}
LOADER = LoaderConfig(max_atoms=60, seed=0)  # ranks hold 4 and 1 batches
STEP_CFG = dict(epochs=1, lr=3e-3, loader=LOADER, log_every=1000, checkpoint_every=1000,
                plots=False, tensorboard=False, ema_decay=None, stress_weight=0.1,
                schedule="constant")  # the cosine's length would depend on the rank count


def test_presets_cover_every_model_kind():
    assert set(TINY) == set(PRESETS)


@pytest.mark.parametrize("name", [*TINY, *VARIANTS])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_and_backward_on_an_empty_batch(name, dtype):
    model = build_model({**TINY, **VARIANTS}[name]).to(dtype=dtype)
    out = model(empty_batch(16, dtype), forces=True, stress=True, training=True)
    assert out["energy"].shape == (0,) and out["forces"].shape == (0, 3)
    assert out["stress"].shape == (0, 3, 3)
    (out["energy"].sum() + out["forces"].sum() + out["stress"].sum()).backward()
    # DDP reduces a gradient for every parameter on every rank: none may be missing
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(float(p.grad.abs().sum()) == 0.0 for p in model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    """~40 frames of at most 20 atoms from the bundled sample, in shards of 6."""
    root = tmp_path_factory.mktemp("ddp")
    build_store(write_small_mptrj(root / "small.json"), root / "store", frames_per_shard=6,
                cluster=ClusterConfig(kind="synchronous"), progress=False,
                split=SplitParams(0.15, 0.0, 0))
    return root / "store"


DDP_SCRIPT = """
import json, os, sys
import torch
from orbitgraph.train.config import TrainConfig
from orbitgraph.train.trainer import Trainer
store, out, models, cfg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
rank = int(os.environ["RANK"])
for name, model in models.items():
    t = Trainer(store, model, TrainConfig.from_dict(json.loads(cfg)), f"{out}/{name}")
    seen = []
    original = t.train_step
    def recording(batch, original=original, seen=seen):
        seen.append(batch.frame_ids)
        return original(batch)
    t.train_step = recording
    t.fit()
    torch.save(t.model.state_dict(), f"{out}/{name}-params-{rank}.pt")
    json.dump(seen, open(f"{out}/{name}-seen-{rank}.json", "w"))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks(script: str, *args) -> None:
    """Run ``script`` (Python source; ``args`` its sys.argv[1:]) as two gloo ranks, as
    torchrun would start them; each must exit 0."""
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(
            [sys.executable, "-c", script, *map(str, args)], env=env,
            cwd=Path(__file__).resolve().parents[1], stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]


@pytest.mark.slow
def test_every_preset_trains_an_epoch_on_two_ranks_of_unequal_batch_counts(store_path, tmp_path):
    train = open_store(store_path).subset(split="train")
    counts = [len(plan_rank(train, LOADER, 0, rank, 2)) for rank in range(2)]
    assert counts[0] != counts[1], counts  # one rank runs out before the epoch ends
    out = tmp_path / "ddp"
    out.mkdir()
    cfg = {**STEP_CFG, "loader": vars(LOADER)}
    two_ranks(DDP_SCRIPT, store_path, out, json.dumps(TINY), json.dumps(cfg))
    by_id = {fid: i for i, fid in enumerate(train.frame_ids)}
    for name, model in TINY.items():
        seen = [json.load(open(out / f"{name}-seen-{r}.json")) for r in range(2)]
        # both ranks took the busiest rank's steps; the other's last ones were empty
        assert len(seen[0]) == len(seen[1]) == max(counts), name
        assert sorted(sum(1 for b in s if b) for s in seen) == sorted(counts), name
        ids = [fid for s in seen for b in s for fid in b]
        assert sorted(ids) == sorted(train.frame_ids), "every frame once per epoch"
        params = [torch.load(out / f"{name}-params-{r}.pt") for r in range(2)]
        for key in params[0]:
            torch.testing.assert_close(params[0][key], params[1][key], rtol=0, atol=0)
        # one process, each step on the union of the ranks' batches
        single = Trainer(store_path, model, TrainConfig(**STEP_CFG), tmp_path / f"one-{name}")
        for step in range(max(counts)):
            frames = [train[by_id[fid]] for r in range(2) for fid in seen[r][step]]
            single.train_step(collate(frames, k=16))
        for key, value in single.model.state_dict().items():
            torch.testing.assert_close(value, params[0][key], rtol=1e-9, atol=1e-11,
                                       msg=f"{name}: {key}")


RESUME_SCRIPT = """
import json, sys
import torch.distributed as dist
from orbitgraph.train.config import TrainConfig
from orbitgraph.train.trainer import Trainer
store, out, model, stop = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[5])
cfg = TrainConfig.from_dict(json.loads(sys.argv[4]))
Trainer(store, model, cfg, f"{out}/straight").fit()
Trainer(store, model, cfg, f"{out}/resumed").fit(stop_after=stop)
dist.barrier()  # rank 0 has written the checkpoint that every rank resumes from
Trainer(store, model, cfg, f"{out}/resumed").fit()
"""


@pytest.mark.slow
def test_a_run_stopped_and_resumed_on_two_ranks_logs_what_the_uninterrupted_run_logs(
        store_path, tmp_path):
    """Two gloo ranks, two epochs of a small model; stopped one step into the second epoch
    and resumed, the run writes the metrics.csv of the uninterrupted run (each epoch's
    train_loss the mean of the global batches' losses of all its steps)."""
    train = open_store(store_path).subset(split="train")
    per_epoch = max(len(plan_rank(train, LOADER, 0, rank, 2)) for rank in range(2))
    cfg = {**STEP_CFG, "epochs": 2, "ema_decay": 0.9, "loader": vars(LOADER)}
    two_ranks(RESUME_SCRIPT, store_path, tmp_path, json.dumps(TINY["invariant"]),
              json.dumps(cfg), per_epoch + 1)
    straight = (tmp_path / "straight" / "metrics.csv").read_text()
    assert straight.count("\n") == 3, straight  # the header and one row per epoch
    assert (tmp_path / "resumed" / "metrics.csv").read_text() == straight


SIGNAL_SCRIPT = """
import json, os, signal, sys
from orbitgraph.train.callbacks import Callback
from orbitgraph.train.config import TrainConfig
from orbitgraph.train.interrupts import Interrupted
from orbitgraph.train.trainer import Trainer
store, out, model = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cfg = TrainConfig.from_dict(json.loads(sys.argv[4]))
rank = int(os.environ["RANK"])

class SignalRankOne(Callback):  # SIGTERM to rank 1 alone, when its step 1 is done
    def on_step_end(self, trainer, step, loss):
        if rank == 1 and step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

trainer = Trainer(store, model, cfg, f"{out}/run", callbacks=[SignalRankOne()])
try:
    trainer.fit()
    stopped = None
except Interrupted as err:
    stopped = err.step
json.dump({"stopped": stopped, "step": trainer.state.step}, open(f"{out}/rank-{rank}.json", "w"))
"""


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(store_path, tmp_path):
    """SIGTERM to rank 1 only: both ranks stop after the same step (the request travels
    with the step's counts), and rank 0's checkpoint holds that step."""
    from orbitgraph.model.checkpoint import read_checkpoint
    from orbitgraph.train.checkpointing import CHECKPOINT

    cfg = {**STEP_CFG, "loader": vars(LOADER)}
    two_ranks(SIGNAL_SCRIPT, store_path, tmp_path, json.dumps(TINY["invariant"]),
              json.dumps(cfg))
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1] == {"stopped": 2, "step": 2}, ranks
    assert read_checkpoint(tmp_path / "run" / CHECKPOINT)["state"]["step"] == 2
