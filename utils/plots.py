"""Reading results/ (the contract's CSV/JSON files only) and building every figure from it.

Each figure builder takes a `Results` and returns a matplotlib Figure, or None when its inputs
are missing; `FIGURES` lists them with the files they need and the command that makes those, so
plot_results.py and make_report.py skip a missing figure with one line naming that command.
"""
import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers, same output everywhere
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from utils.io import _atomic_write, load_json  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Reading results/
# ---------------------------------------------------------------------------------------------

def _num(v):
    """CSV cell -> float when it is a number, None when empty, else the string."""
    if v is None or v == "":
        return None
    try:
        return float(v)
    except ValueError:
        return v


def read_csv(path):
    """Rows of a CSV as dicts of floats (empty cells None); [] when the file is missing."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)]


def folder_fraction(name):
    """'sparsity_50' -> 0.5, 'ratio_30' -> 0.3, 'epoch_010' -> 10 (the number after '_')."""
    value = float(name.split("_", 1)[1])
    return int(value) if name.startswith("epoch_") else value / 100


def ratio_key(fraction):
    """The key detection.json uses for a ratio: %g format ('0.3')."""
    return f"{fraction:g}"


@dataclass
class Results:
    """Everything under one results folder that the figures and the report read."""

    root: Path

    def path(self, *parts):
        return self.root.joinpath(*parts)

    def json(self, *parts):
        p = self.path(*parts)
        return load_json(p) if p.is_file() else None

    def csv(self, *parts):
        return read_csv(self.path(*parts))

    def trajectories(self, pattern):
        """{relative folder: rows} for every trajectory.csv matching `pattern` (a glob)."""
        out = {}
        for p in sorted(self.root.glob(f"{pattern}/trajectory.csv")):
            rows = read_csv(p)
            if rows:
                out[p.parent.relative_to(self.root).as_posix()] = rows
        return out

    # The contract's files, one accessor each.
    @property
    def dense_trajectory(self):
        return self.csv("dense", "trajectory.csv")

    @property
    def dense_summary(self):
        return self.json("dense", "summary.json")

    @property
    def magnitude(self):
        return sorted(self.csv("magnitude", "summary.csv"), key=lambda r: r["sparsity"])

    @property
    def lottery(self):
        return self.csv("lottery", "summary.csv")

    @property
    def early_bird(self):
        return sorted(self.csv("early_bird", "summary.csv"), key=lambda r: (r["ratio"], r["ticket_epoch"]))

    @property
    def detection(self):
        return self.json("early_bird", "detection.json")

    @property
    def robustness(self):
        return self.csv("robustness", "summary.csv")

    def mask_distances(self):
        """{ratio (fraction): (epochs, matrix)} from every early_bird/mask_distance*.csv."""
        out = {}
        for p in sorted(self.path("early_bird").glob("mask_distance*.csv")):
            m = re.search(r"(\d+(?:\.\d+)?)", p.stem)
            ratio = float(m.group(1)) / 100 if m else None
            epochs, matrix = read_matrix(p)
            if matrix.size:
                out[ratio] = (epochs, matrix)
        return out

    def runs(self, task):
        """{folder: summary.json} of every finished run under results/<task>/."""
        return {p.parent.relative_to(self.root).as_posix(): load_json(p)
                for p in sorted(self.path(task).rglob("summary.json"))} if self.path(task).is_dir() else {}


def read_matrix(path):
    """An epoch x epoch CSV, with or without a label column/header -> (epoch labels, matrix)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows:
        return [], np.zeros((0, 0))

    def is_num(s):
        try:
            float(s)
            return True
        except ValueError:
            return False

    header = None if all(is_num(c) for c in rows[0]) else rows.pop(0)
    labelled = header is not None and not is_num(header[0]) and len(header) == len(rows[0]) \
        and len(rows) == len(header) - 1
    if labelled:  # first column holds the epoch of the row
        epochs = [int(float(r[0])) for r in rows]
        data = [[float(c) if c != "" else np.nan for c in r[1:]] for r in rows]
    else:
        data = [[float(c) if c != "" else np.nan for c in r] for r in rows]
        epochs = [int(float(c)) for c in header] if header and all(is_num(c) for c in header) \
            else list(range(len(data)))
    return epochs, np.array(data, dtype=float)


# ---------------------------------------------------------------------------------------------
# Figure helpers
# ---------------------------------------------------------------------------------------------

def col(rows, key):
    return [r.get(key) for r in rows]


def pct(fraction):
    return f"{100 * fraction:g}%"


def save_figure(fig, stem):
    """Write `stem`.png and `stem`.pdf atomically; return the two paths."""
    paths = []
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150, bbox_inches="tight")
        path = Path(f"{stem}.{ext}")
        _atomic_write(path, lambda f: f.write(buf.getvalue()))
        paths.append(path)
    return paths


def _trajectory_grid(runs, title, label_fn=lambda k: k, cmap="viridis"):
    """2x2 panels (loss / accuracy x train / test) with one line per run."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    colors = plt.get_cmap(cmap)(np.linspace(0, 0.9, max(len(runs), 1)))
    for color, (name, rows) in zip(colors, runs.items()):
        for j, split in enumerate(("train", "test")):
            axes[0, j].plot(col(rows, "epoch"), col(rows, f"{split}_loss"), color=color, label=label_fn(name))
            axes[1, j].plot(col(rows, "epoch"), col(rows, f"{split}_acc"), color=color, label=label_fn(name))
    for j, split in enumerate(("training", "test")):
        axes[0, j].set_title(f"{split} loss")
        axes[1, j].set_title(f"{split} accuracy")
        axes[0, j].set_ylabel("cross-entropy loss (nats)")
        axes[1, j].set_ylabel("accuracy (%)")
        axes[1, j].set_xlabel("epoch (0 = before training)")
        for i in range(2):
            axes[i, j].grid(alpha=0.3)
    axes[1, 1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _sparsity_label(folder):
    return "sparsity " + pct(folder_fraction(folder.rsplit("/", 1)[-1]))


# ---------------------------------------------------------------------------------------------
# The figures
# ---------------------------------------------------------------------------------------------

def fig_dense_trajectory(res):
    rows = res.dense_trajectory
    if not rows:
        return None
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    epochs = col(rows, "epoch")
    for split, style in (("train", "-"), ("test", "--")):
        ax_loss.plot(epochs, col(rows, f"{split}_loss"), style, label=split)
        ax_acc.plot(epochs, col(rows, f"{split}_acc"), style, label=split)
    ax_loss.set(xlabel="epoch (0 = initialisation)", ylabel="cross-entropy loss (nats)", title="loss")
    ax_acc.set(xlabel="epoch (0 = initialisation)", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    final = rows[-1]["test_acc"]
    fig.suptitle(f"Step 1: how the dense ResNet-20 learns (final test accuracy {final:.2f}%)")
    fig.tight_layout()
    return fig


def fig_magnitude_trajectories(res):
    runs = res.trajectories("magnitude/sparsity_*")
    if not runs:
        return None
    runs = dict(sorted(runs.items(), key=lambda kv: folder_fraction(kv[0].rsplit("/", 1)[-1])))
    return _trajectory_grid(runs, "Task 2: does retraining recover magnitude-pruned ResNet-20? "
                            "(epoch 0 = pruned, not retrained)", _sparsity_label, "plasma")


def _lottery_fig(method, title):
    def build(res):
        runs = res.trajectories(f"lottery/{method}/sparsity_*")
        if not runs:
            return None
        runs = dict(sorted(runs.items(), key=lambda kv: folder_fraction(kv[0].rsplit("/", 1)[-1])))
        return _trajectory_grid(runs, title, _sparsity_label, "plasma")
    return build


def fig_early_bird_trajectories(res):
    runs = res.trajectories("early_bird/epoch_*/ratio_*")
    if not runs:
        return None

    def label(folder):
        _, e, r = folder.split("/")
        return f"ticket epoch {folder_fraction(e)}, {pct(folder_fraction(r))} channels pruned"
    return _trajectory_grid(runs, "Task 4: retraining each Early-Bird ticket (8 runs: ticket epoch x ratio)",
                            label, "tab10")


def fig_accuracy_vs_sparsity(res):
    mag, lot, dense = res.magnitude, res.lottery, res.dense_summary
    if not mag and not lot:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.2))
    dense_acc = dense["test_acc"] if dense else (mag or lot)[0].get("dense_acc")
    if dense_acc is not None:
        ax.axhline(dense_acc, color="black", ls=":", label=f"dense ({dense_acc:.2f}%)")
    if mag:
        x = [100 * r["sparsity"] for r in mag]
        ax.plot(x, col(mag, "pruned_acc"), "x--", color="tab:gray", label="magnitude pruned, not retrained")
        ax.plot(x, col(mag, "retrained_acc"), "o-", color="tab:blue", label="magnitude pruned + retrained (Task 2)")
    styles = {"oneshot": ("s-", "tab:orange", "one-shot ticket, trained (Task 3)"),
              "imp": ("D-", "tab:red", "IMP ticket, trained (Task 3)"),
              "reinit": ("v:", "tab:purple", "control: same mask, re-initialised"),
              "random": ("^:", "tab:brown", "control: random mask, same layer sparsity")}
    for method, (style, color, label) in styles.items():
        rows = sorted((r for r in lot if r.get("method") == method), key=lambda r: r["sparsity"])
        if rows:
            ax.plot([100 * r["sparsity"] for r in rows], col(rows, "retrained_acc"), style, color=color, label=label)
    ax.set(xlabel="sparsity (% of prunable weights removed)", ylabel="test accuracy (%)",
           title="Which pruned ResNet-20 keeps the dense accuracy? Test accuracy vs sparsity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_early_bird_accuracy(res):
    rows = res.early_bird
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.2))
    ratios = sorted({r["ratio"] for r in rows})
    colors = plt.get_cmap("tab10")(range(len(ratios)))
    for color, ratio in zip(colors, ratios):
        sub = [r for r in rows if r["ratio"] == ratio]
        ax.plot(col(sub, "ticket_epoch"), col(sub, "retrained_acc"), "o-", color=color,
                label=f"{pct(ratio)} channels pruned, retrained")
        ax.plot(col(sub, "ticket_epoch"), col(sub, "pruned_acc"), "x--", color=color, alpha=0.6,
                label=f"{pct(ratio)} channels pruned, not retrained")
    dense_acc = rows[0].get("dense_acc")
    if dense_acc is not None:
        ax.axhline(dense_acc, color="black", ls=":", label=f"dense, fully trained ({dense_acc:.2f}%)")
    ax.set(xlabel="ticket epoch (dense training epochs before pruning)", ylabel="test accuracy (%)",
           title="Task 4: how early can the Early-Bird ticket be drawn?")
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
    detection = res.detection
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
    fig.suptitle("Task 4: when do the channel masks stop changing? Pairwise mask distance")
    fig.tight_layout()
    return fig


def fig_detector(res):
    detection = res.detection
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
                 "first epoch the mask settles below eps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def robustness_family(model):
    """'lottery/imp/sparsity_90' -> 'lottery/imp'; 'dense' -> 'dense'."""
    parts = [p for p in str(model).split("/") if not re.match(r"(sparsity|ratio|round)_", p)]
    return "/".join(parts) or str(model)


def fig_robustness(res):
    rows = res.robustness
    if not rows:
        return None
    groups = {}
    for r in rows:
        family = robustness_family(r["model"])
        if r.get("mask_from"):  # adversarial experiment: the mask came from a natural or a PGD network
            family += f", mask from {r['mask_from']}"
        groups.setdefault((family, r.get("arch"), r.get("training")), []).append(r)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), sharey=True)
    for (family, arch, training), sub in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        sub = sorted(sub, key=lambda r: r["sparsity"] or 0)
        style = "o--" if training == "pgd" else "o-"
        for ax, key in zip(axes, ("clean_acc", "fgsm_acc", "pgd_acc")):
            ax.plot([100 * (r["sparsity"] or 0) for r in sub], col(sub, key), style,
                    label=f"{family} ({arch}, {training} training)")
    for ax, name in zip(axes, ("clean images", "FGSM attack", "PGD attack")):
        ax.set(xlabel="sparsity (% of weights removed)", title=name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle("Bonus: are pruned networks more robust? Accuracy under attack vs sparsity")
    fig.tight_layout()
    return fig


@dataclass
class FigureSpec:
    name: str
    build: object
    needs: str  # the input file(s), for the skip message
    command: str  # what makes them


FIGURES = [
    FigureSpec("dense_trajectory", fig_dense_trajectory, "dense/trajectory.csv", "python train_dense.py"),
    FigureSpec("magnitude_trajectories", fig_magnitude_trajectories, "magnitude/sparsity_*/trajectory.csv",
               "python prune_magnitude.py"),
    FigureSpec("lottery_oneshot_trajectories", _lottery_fig(
        "oneshot", "Task 3: training one-shot lottery tickets (mask from trained weights, reset to init)"),
        "lottery/oneshot/sparsity_*/trajectory.csv", "python lottery_imp.py --mode oneshot"),
    FigureSpec("lottery_imp_trajectories", _lottery_fig(
        "imp", "Task 3: training iterative-magnitude-pruning (IMP) tickets, every round"),
        "lottery/imp/sparsity_*/trajectory.csv", "python lottery_imp.py --mode imp"),
    FigureSpec("lottery_control_reinit_trajectories", _lottery_fig(
        "reinit", "Task 3 control: the ticket's mask with a fresh random initialisation"),
        "lottery/reinit/sparsity_*/trajectory.csv", "python lottery_imp.py --controls reinit"),
    FigureSpec("lottery_control_random_trajectories", _lottery_fig(
        "random", "Task 3 control: a random mask with the ticket's per-layer sparsity"),
        "lottery/random/sparsity_*/trajectory.csv", "python lottery_imp.py --controls random"),
    FigureSpec("early_bird_trajectories", fig_early_bird_trajectories, "early_bird/epoch_*/ratio_*/trajectory.csv",
               "python early_bird.py"),
    FigureSpec("accuracy_vs_sparsity", fig_accuracy_vs_sparsity, "magnitude/summary.csv or lottery/summary.csv",
               "python prune_magnitude.py; python lottery_imp.py"),
    FigureSpec("early_bird_accuracy", fig_early_bird_accuracy, "early_bird/summary.csv", "python early_bird.py"),
    FigureSpec("mask_distance", fig_mask_distance, "early_bird/mask_distance*.csv", "python early_bird.py"),
    FigureSpec("early_bird_detector", fig_detector, "early_bird/detection.json", "python early_bird.py"),
    FigureSpec("robustness", fig_robustness, "robustness/summary.csv", "python robustness.py"),
]


def build_figure(spec, res):
    """(figure or None, one-line skip message or None)."""
    fig = spec.build(res)
    if fig is None:
        return None, f"skipped {spec.name}: no {res.root / spec.needs} (run: {spec.command})"
    return fig, None

