"""Task 4's figures: retraining each ticket, accuracy per ticket epoch, the mask distances and
what the Early-Bird detector sees."""
import matplotlib.pyplot as plt
import numpy as np

from utils.plots.common import (FigureSpec, errorbar, folder_fraction, hline, pct, ratio_key, seeds_note,
                                trajectory_grid)


def fig_early_bird_trajectories(res):
    runs = res.trajectories("early_bird/epoch_*/ratio_*")
    if not runs:
        return None

    def label(folder):
        _, e, r = folder.split("/")
        return f"ticket epoch {folder_fraction(e)}, {pct(folder_fraction(r))} channels pruned"
    return trajectory_grid(runs, f"Task 4: retraining each Early-Bird ticket ({len(runs)} runs: ticket epoch x ratio)"
                           + seeds_note(res),
                           label, "tab10")


def fig_early_bird_accuracy(res):
    rows = res.early_bird
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.2))
    ratios = sorted({r["ratio"] for r in rows})
    colors = plt.get_cmap("tab10")(range(len(ratios)))
    for color, ratio in zip(colors, ratios):
        sub = [r for r in rows if r["ratio"] == ratio]
        errorbar(ax, sub, "ticket_epoch", "retrained_acc", "o-", color=color,
                 label=f"{pct(ratio)} channels pruned, retrained")
        errorbar(ax, sub, "ticket_epoch", "pruned_acc", "x--", color=color, alpha=0.6,
                 label=f"{pct(ratio)} channels pruned, not retrained")
    dense_acc = rows[0].get("dense_acc")
    if dense_acc is not None:
        hline(ax, rows[0], "dense_acc", color="black", ls=":", label=f"dense, fully trained ({dense_acc:.2f}%)")
    ax.set(xlabel="ticket epoch (dense training epochs before pruning)", ylabel="test accuracy (%)",
           title="Task 4: how early can the Early-Bird ticket be drawn?" + seeds_note(res))
    ax.set_xticks(sorted({r["ticket_epoch"] for r in rows}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _eb_epoch(detection, ratio):
    if not detection or ratio is None:
        return None
    return (detection.get("ratios", {}).get(ratio_key(ratio)) or {}).get("eb_epoch")


def fig_mask_distance(res):
    maps = res.mask_distances()
    if not maps:
        return None
    detection = res.replicates[0].detection  # the seed whose distances are drawn
    fig, axes = plt.subplots(1, len(maps), figsize=(5.6 * len(maps), 5), squeeze=False)
    for ax, (ratio, (epochs, matrix)) in zip(axes[0], maps.items()):
        lo, hi = (epochs[0], epochs[-1]) if epochs else (0, len(matrix) - 1)
        im = ax.imshow(matrix, origin="lower", cmap="viridis", vmin=0, vmax=max(np.nanmax(matrix), 1e-9),
                       extent=(lo - 0.5, hi + 0.5, lo - 0.5, hi + 0.5))
        fig.colorbar(im, ax=ax, fraction=0.046, label="mask distance (normalised Hamming)")
        eb = _eb_epoch(detection, ratio)
        if eb is not None:
            ax.axvline(eb, color="red", lw=1.2, ls="--")
            ax.axhline(eb, color="red", lw=1.2, ls="--")
            ax.plot([eb], [eb], "o", color="red", label=f"detected Early-Bird epoch {eb}")
            ax.legend(loc="upper left", fontsize=8)
        name = f"{pct(ratio)} channels pruned" if ratio is not None else "mask distance"
        ax.set(xlabel="epoch", ylabel="epoch", title=name)
    fig.suptitle("Task 4: when do the channel masks stop changing? Pairwise mask distance" + first_seed_note(res))
    fig.tight_layout()
    return fig


def first_seed_note(res):
    """Each seed's detector sees its own epochs, so several seeds draw the first one's and say so."""
    return f" (seed {res.seeds[0]} of {len(res.seeds)})" if res.multi_seed else ""


def fig_detector(res):
    detection = res.replicates[0].detection
    if not detection or not detection.get("ratios"):
        return None
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for key, info in sorted(detection["ratios"].items(), key=lambda kv: float(kv[0])):
        dist = info.get("max_distance") or []
        xs = [e for e, d in enumerate(dist) if d is not None]
        line, = ax.plot(xs, [dist[e] for e in xs], label=f"{pct(float(key))} channels pruned")
        if info.get("eb_epoch") is not None:
            e = info["eb_epoch"]
            ax.plot([e], [dist[e]], "o", color=line.get_color(), ms=8, label=f"  detected at epoch {e}")
    ax.axhline(detection.get("eps", 0.1), color="black", ls=":", label=f"threshold eps = {detection.get('eps')}")
    ax.set(xlabel="dense training epoch", ylabel="max mask distance to the previous masks",
           title=f"Task 4: Early-Bird detector (window {detection.get('window')}): "
                 "first epoch the mask settles below eps" + first_seed_note(res))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


FIGURES = [
    FigureSpec("early_bird_trajectories", fig_early_bird_trajectories, "early_bird/epoch_*/ratio_*/trajectory.csv",
               "python early_bird.py"),
    FigureSpec("early_bird_accuracy", fig_early_bird_accuracy, "early_bird/summary.csv", "python early_bird.py"),
    FigureSpec("mask_distance", fig_mask_distance, "early_bird/mask_distance*.csv", "python early_bird.py"),
    FigureSpec("early_bird_detector", fig_detector, "early_bird/detection.json", "python early_bird.py"),
]
