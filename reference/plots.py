"""PNG plots of a training run's ``metrics.json`` (matplotlib, Agg backend, imported lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(metrics: dict[str, Any], path: Path) -> None:
    """Loss and train/test accuracy per epoch."""
    plt = _plt()
    ep = [e["epoch"] for e in metrics["epochs"]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, [e["loss"] for e in metrics["epochs"]], marker="o")
    a1.set_xlabel("epoch")
    a1.set_ylabel("training loss")
    a1.set_yscale("log")
    a2.plot(ep, [e["train_acc"] for e in metrics["epochs"]], marker="o", label="train (running)")
    a2.plot(ep, [e["test_acc"] for e in metrics["epochs"]], marker="s", label="test")
    a2.set_xlabel("epoch")
    a2.set_ylabel("accuracy")
    a2.legend()
    cfg = metrics["train_config"]
    fig.suptitle(f"{cfg['model']} {cfg['precision']} seed {cfg['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _class_panels(metrics: dict[str, Any], path: Path, draw, ylabel: str, xlabel: str, panel=None) -> None:
    """One panel per tensor class, every tensor id of that class drawn by ``draw(ax, name, t)``;
    ``panel(ax)``, if given, then finishes each panel."""
    plt = _plt()
    tensors = metrics["tensors"]
    classes = sorted({t["class"] for t in tensors.values()})
    fig, axes = plt.subplots(len(classes), 1, figsize=(10, 2.6 * len(classes)), squeeze=False)
    for ax, cls in zip(axes[:, 0], classes, strict=True):
        for name, t in tensors.items():
            if t["class"] == cls:
                draw(ax, name, t)
        if panel is not None:
            panel(ax)
        ax.set_ylabel(f"{cls}\n{ylabel}")
        ax.legend(fontsize=6, ncol=4, loc="best")
    axes[-1, 0].set_xlabel(xlabel)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_point_positions(metrics: dict[str, Any], path: Path) -> None:
    """Point position of every tensor id over iterations, one panel per tensor class."""

    def draw(ax, name, t):
        ax.step(t["iteration"], t["frac"], where="post", label=name, linewidth=1)

    _class_panels(metrics, path, draw, "point position F", "iteration")


def plot_overflow(metrics: dict[str, Any], path: Path) -> None:
    """Overflow rate of every tensor id over iterations (log scale), one panel per tensor class,
    with the monitor's warning level (``metrics["monitor"]["level"]``) drawn across."""
    level = metrics.get("monitor", {}).get("level")

    def draw(ax, name, t):
        ax.plot(t["iteration"], np.maximum(np.asarray(t["overflow_rate"], dtype=np.float64), 1e-5),
                label=name, linewidth=0.8)

    def panel(ax):
        if level is not None:
            ax.axhline(level, color="red", linestyle="--", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylim(0.8e-5, 1.2)

    _class_panels(metrics, path, draw, "overflow rate", "iteration (rates below 1e-5, including 0, drawn at 1e-5)",
                  panel)


def plot_histograms(metrics: dict[str, Any], path: Path, max_tensors: int = 6) -> None:
    """Evolution of the MSB histograms (log count) at the end of each epoch for a few tensors."""
    plt = _plt()
    chosen = [(n, t) for n, t in metrics["tensors"].items() if t["hist_at_epoch_end"]]
    # One of each class first, then fill up.
    by_class: dict[str, tuple[str, dict]] = {}
    for n, t in chosen:
        by_class.setdefault(t["class"], (n, t))
    picks = list(by_class.values())
    picks += [c for c in chosen if c not in picks]
    picks = picks[:max_tensors]
    if not picks:
        return
    hist_min = metrics["core"]["hist_min_exp"]
    fig, axes = plt.subplots(len(picks), 1, figsize=(10, 2.2 * len(picks)), squeeze=False)
    for ax, (name, t) in zip(axes[:, 0], picks, strict=True):
        h = np.log10(1 + np.asarray(t["hist_at_epoch_end"], dtype=np.float64))
        bins = h.shape[1]
        ax.imshow(h.T, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                  extent=(0.5, h.shape[0] + 0.5, hist_min - 0.5, hist_min + bins - 0.5))
        used = np.flatnonzero(h.sum(axis=0))
        if used.size:
            ax.set_ylim(hist_min + used[0] - 1.5, hist_min + used[-1] + 1.5)
        ax.set_ylabel(f"{name}\nexponent")
    axes[-1, 0].set_xlabel("epoch (last iteration's histogram, log10(1+count))")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_run(metrics: dict[str, Any], directory: Path) -> list[Path]:
    """All plots of a run into ``directory``; returns the files written."""
    directory = Path(directory)
    out = [directory / "curves.png"]
    plot_curves(metrics, out[0])
    if metrics["tensors"]:
        out += [directory / "point_positions.png", directory / "histograms.png", directory / "overflow.png"]
        plot_point_positions(metrics, out[1])
        plot_histograms(metrics, out[2])
        plot_overflow(metrics, out[3])
    return out
