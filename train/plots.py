"""Loss curves and parity plots as PNG (matplotlib, no display)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def write_plots(trainer) -> list[str]:
    out = trainer.out
    hist = trainer.state.history
    written = []
    if hist:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        ep = [h["epoch"] for h in hist]
        axes[0].semilogy(ep, [h["train_loss"] for h in hist], "o-")
        axes[0].set(xlabel="epoch", ylabel="training loss", title="loss")
        axes[1].plot(ep, [h["energy_mae_meV_per_atom"] for h in hist], "o-")
        axes[1].set(xlabel="epoch", ylabel="meV/atom", title="validation energy MAE")
        axes[2].plot(ep, [h["forces_mae_meV_per_A"] for h in hist], "o-")
        axes[2].set(xlabel="epoch", ylabel="meV/Å", title="validation force MAE")
        fig.tight_layout()
        fig.savefig(out / "loss_curves.png", dpi=110)
        plt.close(fig)
        written.append(str(out / "loss_curves.png"))
    trainer.validate(keep_pairs=True)
    pairs = trainer.last_pairs
    if pairs["energy"]:
        e = torch.cat(pairs["energy"]).numpy()
        f = torch.cat(pairs["forces"]).numpy()
        fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
        for ax, data, name, unit in ((axes[0], e, "energy", "eV/atom"),
                                     (axes[1], f, "force components", "eV/Å")):
            lo, hi = float(np.min(data)), float(np.max(data))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.scatter(data[:, 0], data[:, 1], s=4, alpha=0.5)
            ax.set(xlabel=f"reference {name} ({unit})", ylabel=f"predicted ({unit})",
                   title=f"validation {name}")
        fig.tight_layout()
        fig.savefig(out / "parity.png", dpi=110)
        plt.close(fig)
        written.append(str(out / "parity.png"))
    return written
