"""Equal-budget accuracy race: orbitgraph's mace preset against mace-torch's MACE, trained
on exactly the same frames with matched hyperparameters, on CPU, one after the other (or,
with ``--concurrent``, at the same time: each sees the same load on a shared machine).

usage: python benchmarks/accuracy.py [--source MPtrj.json[.gz]] [--epochs 3] [--threads 2]
           [--max-frames N] [--k 16] [--model-overrides '{"species_dim": 64}'] [--skip-mace]
           [--concurrent]

1. A store is built from ``--source`` (any MPtrj-format file; default the shared sample),
   split by material (train/val/test), and its splits are exported to extended XYZ
   (REF_energy eV, REF_forces eV/Å, REF_stress eV/Å³ with ASE's sign, Voigt order) for
   mace-torch: both codes see the same frames at the same positions.
2. Both train with the same hyperparameters: channels, hidden L (0e + 1o), max_ell,
   correlation, layers, Bessel functions, polynomial envelope, cutoff, radial MLP, readout
   MLP, E0s (the store's least-squares values; 0 eV for elements no training frame holds),
   MSE loss on energy per atom, force components and stress components with the same
   weights (stress: 0.1 per GPa² here is 0.1 x 160.2² per (eV/Å³)² there), Adam with
   AMSGrad (mace-torch always uses it) and no weight decay, a constant learning rate,
   batches of 10 frames, EMA 0.99, gradient clipping at 10, float32, the same epochs.
   What differs is each code's design: a k-nearest-neighbour graph with its rank envelope
   and a rank-16 species embedding here, a radius graph and per-element weights there.
3. Each model is checked through its ASE calculator on the test frames (float64): those
   are the figures printed, energy per atom (meV/atom), force components (meV/Å), stress
   components (GPa), MAE and RMSE. orbitgraph's are also computed by
   ``train.evaluation.evaluate`` from the store; the two must agree.
4. Validation curves (against epoch and against training wall time) go to one PNG; the
   targets are checked; diagnostics say how much of the error sits in frames holding
   elements that few training frames hold (a poorly fitted E0) and in frames with forces
   above 50 eV/Å (which dominate a squared loss), and how far validation and test differ.

mace-torch runs in its own virtual environment (see benchmarks/_mace.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mace import MACE_VERSION, run_mace  # noqa: E402  (before _common drops this folder)

# isort: split
import numpy as np  # noqa: E402
from _common import OUT, SAMPLE  # noqa: E402

GPA = 160.21766208  # GPa per eV/Å³
HIGH_FORCE = 50.0  # eV/Å: frames with a larger force component dominate a squared loss
RARE = 5  # an element held by fewer training frames has a poorly fitted E0
BATCH = 10  # frames per batch, both codes

# mace-torch's run_train, with every validation stamped with the time it ended
MACE_TRAIN = r'''
import importlib, json, sys, time
import torch
train_module = importlib.import_module("mace.tools.train")  # mace.tools.train is also a function
argv, stamps_path, threads = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
stamps, original = [], train_module.valid_err_log
def stamped(valid_loss, eval_metrics, logger, log_errors, epoch=None, *rest, **kw):
    stamps.append({"epoch": epoch, "t": time.perf_counter(), "cpu": time.process_time(),
                   "energy_mae_meV_per_atom": 1e3 * float(eval_metrics["mae_e_per_atom"]),
                   "forces_mae_meV_per_A": 1e3 * float(eval_metrics["mae_f"])})
    return original(valid_loss, eval_metrics, logger, log_errors, epoch, *rest, **kw)
train_module.valid_err_log = stamped
from mace.cli.run_train import main
sys.argv = ["mace_run_train", *argv]
main()
json.dump(stamps, open(stamps_path, "w"))
'''

# mace-torch's ASE calculator over extended XYZ frames (float64)
MACE_PREDICT = r'''
import json, sys
import numpy as np, torch
from ase.io import read
from mace.calculators import MACECalculator
model, frames, out, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
calc = MACECalculator(model_paths=model, device="cpu", default_dtype="float64")
e, f, s = [], [], []
for atoms in read(frames, index=":"):
    atoms.calc = calc
    e.append(atoms.get_potential_energy())
    f.append(atoms.get_forces())
    s.append(atoms.get_stress(voigt=False) if atoms.pbc.all() else np.full((3, 3), np.nan))
np.savez(out, energy=np.array(e), forces=np.concatenate(f), stress=np.array(s))
params = sum(p.numel() for p in torch.load(model, weights_only=False).parameters())
print(json.dumps({"params": params}))
'''


# ------------------------------------------------------------------------- the frames

def small_source(source: Path, max_frames: int, root: Path) -> Path:
    """Whole materials of ``source``, in file order, until ``max_frames`` frames."""
    import gzip

    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt") as f:
        data = json.load(f)
    small, n = {}, 0
    for mid, frames in data.items():
        if n >= max_frames:
            break
        small[mid] = frames
        n += len(frames)
    path = root / f"source-{max_frames}.json"
    path.write_text(json.dumps(small))
    return path


def build(args, root: Path) -> Path:
    from orbitgraph.preprocess.build import build_store
    from orbitgraph.preprocess.cluster import ClusterConfig
    from orbitgraph.preprocess.store import GraphParams, SplitParams

    source = Path(args.source)
    if args.max_frames:
        source = small_source(source, args.max_frames, root)
    out = root / f"store-{source.name.split('.')[0]}-k{args.k}-s{args.seed}"
    if not (out / "manifest.json").is_file():
        build_store(source, out, graph=GraphParams(k=args.k), frames_per_shard=500,
                    split=SplitParams(args.val_fraction, args.test_fraction, args.seed),
                    cluster=ClusterConfig(kind="synchronous"), progress=False)
    return out


def export_extxyz(subset, path: Path) -> list:
    """The frames of a store subset as extended XYZ with REF_* labels (and no calculator
    keys, which mace-torch would take for labels of another name); the ase.Atoms."""
    from ase import Atoms
    from ase.io import write

    frames = []
    for i in range(len(subset)):
        f = subset[i]
        atoms = Atoms(numbers=f["numbers"], positions=f["positions"], cell=f["cell"],
                      pbc=f["pbc"])
        atoms.info["REF_energy"] = float(f["energy"])
        atoms.info["frame_id"] = str(f["frame_id"])
        atoms.arrays["REF_forces"] = np.asarray(f["forces"], dtype=np.float64)
        s = np.asarray(f["stress"], dtype=np.float64)
        if not np.isnan(s).any():
            atoms.info["REF_stress"] = np.array([s[0, 0], s[1, 1], s[2, 2],
                                                 s[1, 2], s[0, 2], s[0, 1]])
        frames.append(atoms)
    write(path, frames, format="extxyz")
    return frames


def labels(frames: list) -> dict:
    """Reference values of ase.Atoms written by :func:`export_extxyz`."""
    def stress(a):
        if "REF_stress" not in a.info:
            return np.full((3, 3), np.nan)
        v = a.info["REF_stress"]
        return np.array([[v[0], v[5], v[4]], [v[5], v[1], v[3]], [v[4], v[3], v[2]]])
    return {"n_atoms": np.array([len(a) for a in frames]),
            "energy": np.array([a.info["REF_energy"] for a in frames]),
            "forces": np.concatenate([a.arrays["REF_forces"] for a in frames]),
            "stress": np.array([stress(a) for a in frames]),
            "symbols": [set(a.get_chemical_symbols()) for a in frames]}


def errors(ref: dict, pred: dict, keep: np.ndarray | None = None) -> dict:
    """MAE and RMSE: energy per atom (meV/atom), force components (meV/Å), stress
    components (GPa), over the frames ``keep`` (bool per frame; all if None)."""
    keep = np.ones(len(ref["energy"]), dtype=bool) if keep is None else keep
    atoms = np.repeat(keep, ref["n_atoms"])
    de = 1e3 * (pred["energy"] - ref["energy"])[keep] / ref["n_atoms"][keep]
    df = 1e3 * (pred["forces"] - ref["forces"])[atoms].ravel()
    ds = GPA * (pred["stress"] - ref["stress"])[keep].ravel()
    ds = ds[~np.isnan(ds)]

    def pair(d):
        return (float(np.abs(d).mean()), float(np.sqrt((d ** 2).mean()))) if d.size \
            else (float("nan"), float("nan"))
    (e_mae, e_rmse), (f_mae, f_rmse), (s_mae, s_rmse) = pair(de), pair(df), pair(ds)
    return {"energy_mae_meV_per_atom": e_mae, "energy_rmse_meV_per_atom": e_rmse,
            "forces_mae_meV_per_A": f_mae, "forces_rmse_meV_per_A": f_rmse,
            "stress_mae_GPa": s_mae, "stress_rmse_GPa": s_rmse, "frames": int(keep.sum())}


# ------------------------------------------------------------------------ the contenders

def train_ours(store: Path, args, root: Path) -> dict:
    import torch

    from orbitgraph.train.callbacks import Callback
    from orbitgraph.train.config import TrainConfig
    from orbitgraph.train.loader import LoaderConfig
    from orbitgraph.train.logs import Formatter
    from orbitgraph.train.trainer import Trainer

    torch.set_num_threads(args.threads)
    model = {"preset": "mace", "channels": args.channels, "hidden_l_max": 1,
             "sh_l_max": args.max_ell, "correlation": 3, "layers": 2, "num_radial": 8,
             "envelope_p": 5, "cutoff": args.cutoff, "radial_mlp": [64, 64],
             "readout_mlp": [16],
             "atomic_energies": "least_squares",  # the E0s mace-torch is given (E0s.json)
             **json.loads(args.model_overrides)}
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, optimizer="adam", amsgrad=True,
                      weight_decay=0.0, schedule="constant", ema_decay=0.99, grad_clip=10.0,
                      precision="float32", loss="mse", energy_weight=1.0, forces_weight=10.0,
                      stress_weight=0.1, seed=args.seed,
                      loader=LoaderConfig(batch_frames=BATCH, seed=args.seed),
                      log_every=10 ** 9, checkpoint_every=10 ** 9, plots=False,
                      tensorboard=False)
    out = root / "orbitgraph"
    curve = []

    class Curve(Callback):
        """The validation curve, sampled after each epoch."""

        def on_epoch_end(self, trainer, epoch: int, record: dict) -> None:
            curve.append({"epoch": epoch + 1, "t": time.perf_counter() - t0,
                          "cpu": time.process_time() - cpu0,
                          "energy_mae_meV_per_atom": record["energy_mae_meV_per_atom"],
                          "forces_mae_meV_per_A": record["forces_mae_meV_per_A"]})

    class Lines(logging.Handler):
        """The trainer's epoch lines and warnings, printed."""

        def emit(self, record: logging.LogRecord) -> None:
            line = self.format(record)
            if (line.startswith("epoch ") and ": train loss" in line
                    or record.levelno >= logging.WARNING):
                print(f"  orbitgraph {line}", flush=True)

    trainer = Trainer(store, model, cfg, out, resume=False, callbacks=[Curve()])
    t0, cpu0 = time.perf_counter(), time.process_time()
    handler = Lines()
    handler.setFormatter(Formatter("%(message)s"))
    logger = logging.getLogger("orbitgraph.train")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        result = trainer.fit()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    return {"params": sum(p.numel() for p in trainer.model.parameters()),
            "wall_s": result["wall_s"], "cpu_s": time.process_time() - cpu0,
            "steps": trainer.state.step, "curve": curve,
            "model": out / "best.pt", "config": trainer.model.config.to_dict()}


def predict_ours(checkpoint: Path, frames: list, threads: int) -> dict:
    import warnings

    import torch

    from orbitgraph.train.calculator import OrbitCalculator, UntrainedElementWarning

    torch.set_num_threads(threads)
    warnings.simplefilter("ignore", UntrainedElementWarning)  # counted in the diagnostics
    calc = OrbitCalculator.from_checkpoint(checkpoint)
    e, f, s = [], [], []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        e.append(atoms.get_potential_energy())
        f.append(atoms.get_forces())
        s.append(atoms.get_stress(voigt=False) if atoms.pbc.all() else np.full((3, 3), np.nan))
    return {"energy": np.array(e), "forces": np.concatenate(f), "stress": np.array(s)}


def train_mace(paths: dict, e0_path: Path, numbers: list[int], n_train: int, args,
               root: Path) -> dict:
    work = root / "mace"
    stamps = root / "mace_stamps.json"
    argv = ["--name=mace", f"--seed={args.seed}", f"--work_dir={work}",
            f"--train_file={paths['train']}", f"--valid_file={paths['val']}",
            f"--test_file={paths['test']}", "--energy_key=REF_energy",
            "--forces_key=REF_forces", "--stress_key=REF_stress", f"--E0s={e0_path}",
            f"--atomic_numbers={numbers}", "--model=MACE", f"--num_channels={args.channels}",
            "--max_L=1", f"--max_ell={args.max_ell}", "--correlation=3",
            "--num_interactions=2", "--num_radial_basis=8", "--num_cutoff_basis=5",
            f"--r_max={args.cutoff}", "--radial_MLP=[64, 64]", "--MLP_irreps=16x0e",
            "--loss=stress", "--energy_weight=1.0", "--forces_weight=10.0",
            f"--stress_weight={0.1 * GPA ** 2}", "--compute_stress=True", "--optimizer=adam",
            f"--lr={args.lr}", "--weight_decay=0.0", "--scheduler_patience=1000000",
            f"--batch_size={BATCH}", f"--valid_batch_size={BATCH}",
            f"--max_num_epochs={args.epochs}", "--ema", "--ema_decay=0.99",
            "--eval_interval=1", "--clip_grad=10.0", "--default_dtype=float32",
            "--device=cpu", "--error_table=PerAtomMAE", "--num_workers=0", "--save_cpu"]
    if not (args.reuse_mace and stamps.is_file() and (work / "mace.model").is_file()):
        run_mace(MACE_TRAIN, json.dumps(argv), str(stamps), str(args.threads),
                 threads=args.threads)
    marks = json.loads(stamps.read_text())
    start, cpu0 = marks[0]["t"], marks[0]["cpu"]  # the validation before the first step
    curve = [{"epoch": m["epoch"] + 1, "t": m["t"] - start, "cpu": m["cpu"] - cpu0,
              "energy_mae_meV_per_atom": m["energy_mae_meV_per_atom"],
              "forces_mae_meV_per_A": m["forces_mae_meV_per_A"]}
             for m in marks[1:] if m["epoch"] is not None][:args.epochs]
    return {"wall_s": curve[-1]["t"], "cpu_s": curve[-1]["cpu"], "curve": curve,
            "steps": args.epochs * (n_train // BATCH),  # its training loader drops the last
            "model": work / "mace.model"}


def predict_mace(model: Path, frames_path: Path, root: Path, threads: int) -> tuple[dict, int]:
    out = root / "mace_test_predictions.npz"
    info = json.loads(run_mace(MACE_PREDICT, str(model), str(frames_path), str(out),
                               str(threads), threads=threads).strip().splitlines()[-1])
    d = np.load(out)
    return {"energy": d["energy"], "forces": d["forces"], "stress": d["stress"]}, info["params"]


# ------------------------------------------------------------------------- the report

def plot(curves: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for name, curve in curves.items():
        epoch = [c["epoch"] for c in curve]
        t = [c["t"] / 60 for c in curve]
        for row, key, unit in ((0, "energy_mae_meV_per_atom", "meV/atom"),
                               (1, "forces_mae_meV_per_A", "meV/Å")):
            values = [c[key] for c in curve]
            axes[row, 0].plot(epoch, values, "o-", label=name)
            axes[row, 1].plot(t, values, "o-", label=name)
            axes[row, 0].set_ylabel(f"validation MAE, {unit}")
    for ax in axes[1]:
        ax.set_xlabel("")
    axes[1, 0].set_xlabel("epoch")
    axes[1, 1].set_xlabel("training wall time, min")
    axes[0, 0].set_title("energy per atom and forces vs epoch")
    axes[0, 1].set_title("vs training wall time (same CPU threads each)")
    for ax in axes.flat:
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def row(name: str, r: dict, m: dict) -> str:
    return (f"{name:12s} {r['params']:>9,d} {r['wall_s']:>8.0f} {r['cpu_s']:>7.0f} "
            f"{r['steps']:>6d} "
            f"{m['energy_mae_meV_per_atom']:>8.1f} {m['energy_rmse_meV_per_atom']:>8.1f} "
            f"{m['forces_mae_meV_per_A']:>8.1f} {m['forces_rmse_meV_per_A']:>8.1f} "
            f"{m['stress_mae_GPa']:>7.3f} {m['stress_rmse_GPa']:>7.3f}")


def time_to_reach(curve: list[dict], target: float) -> float | None:
    """Training wall time (s) at the first validation with a force MAE <= ``target``."""
    for c in curve:
        if c["forces_mae_meV_per_A"] <= target:
            return c["t"]
    return None


def diagnostics(store, test_ref: dict, preds: dict) -> list[str]:
    """Where the test error sits: rare elements (E0), frames over HIGH_FORCE, untrained
    elements."""
    train = store.subset(split="train")
    per_element: dict[str, int] = {}
    for frame in train.index["elements"].to_pylist():
        for el in frame:
            per_element[el] = per_element.get(el, 0) + 1
    rare = np.array([any(per_element.get(el, 0) < RARE for el in s)
                     for s in test_ref["symbols"]])
    untrained = np.array([any(el not in per_element for el in s) for s in test_ref["symbols"]])
    f_max = np.array([np.abs(f).max() for f in np.split(test_ref["forces"],
                                                          np.cumsum(test_ref["n_atoms"])[:-1])])
    high = f_max > HIGH_FORCE
    train_f = [np.abs(train[i]["forces"]) for i in range(len(train))]
    train_high = np.array([f.max() > HIGH_FORCE for f in train_f])
    sq = np.array([float((f.astype(np.float64) ** 2).sum()) for f in train_f])
    lines = [f"training frames with a force component > {HIGH_FORCE:.0f} eV/Å: "
             f"{int(train_high.sum())} of {len(train)}, holding "
             f"{100 * sq[train_high].sum() / sq.sum():.0f} % of Σ F² (the force loss of a "
             f"model predicting zero)",
             f"test frames: {len(rare)}; with an element held by < {RARE} training frames "
             f"(poorly fitted E0): {int(rare.sum())} ({int(untrained.sum())} with an element "
             f"no training frame holds: E0 = 0 eV); with a force component > "
             f"{HIGH_FORCE:.0f} eV/Å: {int(high.sum())}"]
    for name, pred in preds.items():
        parts = []
        for label, keep in (("all", None), ("without rare-element frames", ~rare),
                            ("rare-element frames", rare), (f"without > {HIGH_FORCE:.0f} eV/Å",
                                                             ~high)):
            if keep is not None and not keep.any():
                continue
            m = errors(test_ref, pred, keep)
            parts.append(f"{label}: E {m['energy_mae_meV_per_atom']:.0f} meV/atom, "
                         f"F {m['forces_mae_meV_per_A']:.0f} meV/Å")
        lines.append(f"{name} test MAE, " + "; ".join(parts))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=str(SAMPLE), help="MPtrj-format .json or .json.gz")
    ap.add_argument("--epochs", type=int, default=3, help="the budget: epochs for each code")
    ap.add_argument("--max-frames", type=int, help="use only the first materials' frames")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for each code")
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--max-ell", type=int, default=2)
    ap.add_argument("--cutoff", type=float, default=5.0, help="Å")
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--k", type=int, default=16, help="the store's neighbours per atom")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--test-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-overrides", default="{}", help="JSON, e.g. an ablation's")
    ap.add_argument("--skip-mace", action="store_true", help="train orbitgraph only")
    ap.add_argument("--concurrent", action="store_true",
                    help="train both codes at the same time, each on --threads threads")
    ap.add_argument("--reuse-mace", action="store_true",
                    help="reuse mace-torch's model and curve from an earlier run in --out")
    ap.add_argument("--out", default=str(OUT / "accuracy"))
    args = ap.parse_args()
    if not Path(args.source).is_file():
        raise SystemExit(f"{args.source}: no such file (give --source an MPtrj-format file)")
    from orbitgraph.preprocess.store import open_store
    from orbitgraph.train.evaluation import evaluate

    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    store_path = build(args, root)
    store = open_store(store_path)
    paths, frames = {}, {}
    for split in ("train", "val", "test"):
        paths[split] = root / f"{split}.extxyz"
        frames[split] = export_extxyz(store.subset(split=split), paths[split])
    empty = [split for split in frames if not frames[split]]
    if empty:
        raise SystemExit(f"no {' or '.join(empty)} frames: give more frames (--max-frames) or "
                         "larger --val-fraction/--test-fraction")
    print(f"source {args.source}: {len(store)} frames; train/val/test "
          f"{len(frames['train'])}/{len(frames['val'])}/{len(frames['test'])} by material; "
          f"{args.epochs} epochs each, batches of {BATCH}, {args.threads} threads, float32; "
          f"{args.channels} channels, L=1, max_ell {args.max_ell}, correlation 3, 2 layers, "
          f"8 Bessel, r = {args.cutoff} Å; orbitgraph k = {args.k}", flush=True)
    e0 = {int(z): float(v) for z, v in
          store.manifest.statistics["atomic_energies_eV"].items()}
    numbers = sorted({int(z) for a in sum(frames.values(), []) for z in a.numbers})
    e0_path = root / "E0s.json"
    e0_path.write_text(json.dumps({z: e0.get(z, 0.0) for z in numbers}))
    test_ref = labels(frames["test"])

    results, preds, checks = {}, {}, {}
    mace_run = None
    if args.concurrent and not args.skip_mace:
        # mace-torch trains in its own process; this thread only waits for it
        mace_run = ThreadPoolExecutor(1).submit(train_mace, paths, e0_path, numbers,
                                                len(frames["train"]), args, root)
    print("training orbitgraph ...", flush=True)
    ours = train_ours(store_path, args, root)
    preds["orbitgraph"] = predict_ours(ours["model"], frames["test"], args.threads)
    results["orbitgraph"] = ours
    native = evaluate(ours["model"], store, split="test")
    checks["orbitgraph"] = native
    if not args.skip_mace:
        print(f"training mace-torch {MACE_VERSION} ...", flush=True)
        theirs = mace_run.result() if mace_run is not None else \
            train_mace(paths, e0_path, numbers, len(frames["train"]), args, root)
        preds["mace-torch"], theirs["params"] = predict_mace(theirs["model"], paths["test"],
                                                             root, args.threads)
        results["mace-torch"] = theirs
        for c in theirs["curve"]:
            print(f"  mace-torch epoch {c['epoch'] - 1}: val energy MAE "
                  f"{c['energy_mae_meV_per_atom']:.2f} meV/atom, forces MAE "
                  f"{c['forces_mae_meV_per_A']:.1f} meV/Å ({c['t']:.0f} s)")

    metrics = {name: errors(test_ref, pred) for name, pred in preds.items()}
    print(f"\ntest split ({metrics['orbitgraph']['frames']} frames), through each code's ASE "
          "calculator in float64")
    print(f"{'':12s} {'params':>9s} {'wall s':>8s} {'CPU s':>7s} {'steps':>6s} {'E MAE':>8s} "
          f"{'E RMSE':>8s} {'F MAE':>8s} {'F RMSE':>8s} {'σ MAE':>7s} {'σ RMSE':>7s}")
    print(f"{'':12s} {'':>9s} {'':>8s} {'':>7s} {'':>6s} {'meV/atom':>17s} {'meV/Å':>17s} "
          f"{'GPa':>15s}")
    for name in preds:
        print(row(name, results[name], metrics[name]))
    gap = max(abs(native[k] - metrics["orbitgraph"][k]) / max(abs(native[k]), 1e-12)
              for k in ("energy_mae_meV_per_atom", "forces_mae_meV_per_A"))
    print(f"orbitgraph through evaluate() on the store: E {native['energy_mae_meV_per_atom']:.2f} "
          f"meV/atom, F {native['forces_mae_meV_per_A']:.2f} meV/Å, σ "
          f"{native['stress_mae_GPa']:.4f} GPa (relative difference to the calculator "
          f"{gap:.1e})")
    for name, r in results.items():
        last = r["curve"][-1]
        print(f"{name}: final validation E {last['energy_mae_meV_per_atom']:.1f} meV/atom, "
              f"F {last['forces_mae_meV_per_A']:.1f} meV/Å; test E "
              f"{metrics[name]['energy_mae_meV_per_atom']:.1f}, F "
              f"{metrics[name]['forces_mae_meV_per_A']:.1f}")

    summary = {"args": vars(args), "metrics": metrics, "evaluate": native,
               "results": {n: {k: v for k, v in r.items() if k not in ("model",)}
                           for n, r in results.items()}}
    if "mace-torch" in results:
        o, m = metrics["orbitgraph"], metrics["mace-torch"]
        equal = (o["energy_mae_meV_per_atom"] <= m["energy_mae_meV_per_atom"]
                 and o["forces_mae_meV_per_A"] <= m["forces_mae_meV_per_A"])
        target = results["mace-torch"]["curve"][-1]["forces_mae_meV_per_A"]
        reached = time_to_reach(ours["curve"], target)
        print(f"\ntarget 1, at {args.epochs} epochs orbitgraph's test energy and force MAE <= "
              f"mace-torch's: {'holds' if equal else 'does not hold'}")
        print(f"target 2, orbitgraph reaches mace-torch's final validation force MAE "
              f"({target:.1f} meV/Å, after {results['mace-torch']['wall_s']:.0f} s) in less "
              "wall time: " + (f"holds ({reached:.0f} s)" if reached is not None and
                               reached < results["mace-torch"]["wall_s"]
                               else "does not hold (" + ("not reached" if reached is None
                                                         else f"{reached:.0f} s") + ")"))
        summary["targets"] = {"equal_epochs": equal, "time_to_mace_final_force_s": reached}
    print("\nwhere the error sits:")
    lines = diagnostics(store, test_ref, preds)
    for line in lines:
        print(f"  {line}")
    summary["diagnostics"] = lines
    png = root / "validation_curves.png"
    plot({n: r["curve"] for n, r in results.items()}, png,
         f"validation MAE, {len(frames['train'])} training frames of {Path(args.source).name}, "
         f"{args.epochs} epochs")
    (root / "accuracy.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"\ncurves {png}; figures {root / 'accuracy.json'}")


if __name__ == "__main__":
    main()
