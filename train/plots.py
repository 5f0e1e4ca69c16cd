"""Figures a practitioner reads at a glance (matplotlib, PNG, no display).

* ``loss_curves.png``: the training loss per logged step (log scale), and the validation
  MAEs of energy, forces and stress divided by their baselines (log scale): 1 is a model
  that learned nothing (E0-only energy, zero force, zero stress; :mod:`orbitgraph.train.report`),
  0.5 is half the baseline's error.
* ``parity.png``: predicted against reference energy per atom (eV/atom), force components
  (eV/Å) and stress components (GPa), equal axes, MAE and the baseline's MAE in the legend.
* ``comparison-STORE.png``: the experiments that share a store, one row each, with those
  five panels and common axes per column.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from orbitgraph.train.report import QUANTITIES, Pairs  # noqa: E402

COLORS = {"energy_mae_meV_per_atom": "tab:blue", "forces_mae_meV_per_A": "tab:orange",
          "stress_mae_GPa": "tab:green"}
PARITY = (("energy", "energy per atom", "eV/atom", "energy_mae_meV_per_atom"),
          ("forces", "force components", "eV/Å", "forces_mae_meV_per_A"),
          ("stress", "stress components", "GPa", "stress_mae_GPa"))


def _steps(history: list[dict]) -> np.ndarray:
    return np.array([h["step"] for h in history], dtype=float)


def _plain_log_ticks(ax) -> None:
    """Log-scale y ticks written as plain numbers (0.5, 1, 20) rather than 5×10⁻¹."""
    formatter = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(formatter)
    ax.yaxis.set_minor_formatter(FuncFormatter(
        lambda v, _: f"{v:g}" if f"{v:.1e}"[0] in "25" else ""))


def plot_training_loss(ax, history: list[dict], step_losses: list | None = None) -> None:
    """Training loss (log scale): each optimiser step's batch loss if given (faint), its
    running mean over 20 steps, and each epoch's mean at the epoch's last step."""
    if step_losses:
        steps, losses = np.asarray(step_losses, dtype=float).T
        ax.semilogy(steps, losses, color="0.75", lw=0.6, label="batch")
        window = min(20, len(losses))
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.semilogy(steps[window - 1:], smooth, color="k", lw=1.2,
                    label=f"running mean ({window} steps)")
    if history:
        ax.semilogy(_steps(history), [h["train_loss"] for h in history], "o", color="tab:red",
                    ms=4, label="epoch mean")
    ax.set(xlabel="optimiser step", ylabel="loss (weighted MSE)", title="training loss")
    _plain_log_ticks(ax)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")


def plot_validation(ax, history: list[dict], baseline: dict) -> None:
    """Validation MAE / baseline MAE for each quantity, per validation (each epoch)."""
    steps = _steps(history)
    highest = 1.0
    plotted = False
    for key, label, unit, _ in QUANTITIES:
        base = baseline.get(key, float("nan"))
        values = np.array([h.get(key, np.nan) for h in history], dtype=float)
        if not (base > 0 and np.isfinite(values).any()):
            continue
        highest = max(highest, float(np.nanmax(values / base)))
        plotted = True
        ax.semilogy(steps, values / base, "o-", ms=3, color=COLORS[key],
                    label=f"{label}: {values[-1]:.3g} {unit} (baseline {base:.3g})")
    ax.axhline(1.0, color="grey", ls=":", lw=1)
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    for y, text, va in ((1.0, "baseline: learned nothing", "top"),
                        (0.5, "half the baseline", "bottom")):
        ax.annotate(text, (0.99, y), xycoords=("axes fraction", "data"), fontsize=7,
                    color="0.35", ha="right", va=va)
    ax.set_ylim(top=2.5 * highest)  # room for the legend above the curves
    ax.set(xlabel="optimiser step", ylabel="validation MAE / baseline MAE",
           title="validation error")
    _plain_log_ticks(ax)
    ax.grid(True, which="both", alpha=0.3)
    if plotted:
        ax.legend(fontsize=7, loc="upper right", framealpha=0.85)
    else:
        ax.text(0.5, 0.5, "no validation frames", transform=ax.transAxes, ha="center")


def plot_parity(ax, pairs: np.ndarray, title: str, unit: str, mae_text: str,
                lims: tuple[float, float] | None = None) -> None:
    """Predicted (y) against reference (x) with equal axes and the diagonal."""
    if lims is None:
        lims = parity_limits([pairs])
    ax.plot(lims, lims, color="grey", lw=0.8, zorder=1)
    ax.scatter(pairs[:, 0], pairs[:, 1], s=5, alpha=0.45, lw=0, zorder=2, rasterized=True,
               label=mae_text)
    ax.set_xlim(lims)
    ax.set_ylim(lims)
    ax.set_aspect("equal")
    ax.set(xlabel=f"reference ({unit})", ylabel=f"predicted ({unit})", title=title)
    ax.legend(fontsize=7, loc="upper left", handletextpad=0.2, markerscale=2)


def parity_limits(arrays: list[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([a.ravel() for a in arrays if len(a)] or [np.zeros(1)])
    lo, hi = float(values.min()), float(values.max())
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    return lo - pad, hi + pad


def _mae_text(metrics: dict, baseline: dict, key: str) -> str:
    unit = {k: u for k, _, u, _ in QUANTITIES}[key]
    return f"MAE {metrics[key]:.3g} {unit}\nbaseline {baseline[key]:.3g} {unit}"


def write_loss_curves(path: Path, history: list[dict], baseline: dict, title: str,
                      step_losses: list | None = None) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    plot_training_loss(axes[0], history, step_losses)
    plot_validation(axes[1], history, baseline)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def write_parity(path: Path, pairs: Pairs, metrics: dict, baseline: dict, title: str) -> str:
    pairs = pairs.thinned()
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    for ax, (field, label, unit, key) in zip(axes, PARITY, strict=True):
        plot_parity(ax, getattr(pairs, field), label, unit, _mae_text(metrics, baseline, key))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def write_comparison(path: Path, experiments: list[dict], title: str) -> str:
    """``experiments``: dicts with ``name``, ``history``, ``step_losses``, ``pairs``
    (:class:`Pairs`), ``metrics``, ``baseline`` (test split) and ``val_baseline``. One row
    per experiment;
    each column shares its axes so that rows compare at a glance."""
    experiments = [dict(e, pairs=e["pairs"].thinned()) for e in experiments]
    n = len(experiments)
    fig, axes = plt.subplots(n, 5, figsize=(20, 3.9 * n), squeeze=False)
    lims = {field: parity_limits([getattr(e["pairs"], field) for e in experiments])
            for field, *_ in PARITY}
    for row, e in zip(axes, experiments, strict=True):
        plot_training_loss(row[0], e["history"], e.get("step_losses"))
        plot_validation(row[1], e["history"], e["val_baseline"])
        row[0].set_title(f"{e['name']}: training loss")
        row[1].set_title(f"{e['name']}: validation error")
        for ax, (field, label, unit, key) in zip(row[2:], PARITY, strict=True):
            plot_parity(ax, getattr(e["pairs"], field), f"{e['name']}: test {label}", unit,
                        _mae_text(e["metrics"], e["baseline"], key), lims[field])
    for col in (0, 1):
        ys = [ax.get_ylim() for ax in axes[:, col]]
        for ax in axes[:, col]:
            ax.set_ylim(min(y[0] for y in ys), max(y[1] for y in ys))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def write_plots(trainer) -> list[str]:
    """The trainer's end-of-run figures in its output folder: loss curves (each step's loss,
    as ``orbitgraph run`` draws them), and parity on the validation split with the current
    (EMA) weights."""
    from orbitgraph.train.report import baselines, predict_pairs

    out = trainer.out
    written = []
    val_baseline = baselines(trainer.val_set, None) if len(trainer.val_set) else {}
    if trainer.state.history:
        written.append(write_loss_curves(out / "loss_curves.png", trainer.state.history,
                                         val_baseline, str(out), trainer.step_losses.losses))
    if len(trainer.val_set):
        pairs = predict_pairs(trainer.inference_model(), trainer.val_set, trainer.graph,
                              device=trainer.device)
        written.append(write_parity(out / "parity.png", pairs, pairs.mae(), val_baseline,
                                    f"{out}: validation split ({len(trainer.val_set)} frames)"))
    return written
