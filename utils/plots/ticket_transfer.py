"""Figures of ticket_transfer.py, from results/ticket_transfer/ alone.

ticket_imp_accuracy: trained test accuracy against % of weights remaining (log), IMP tickets
  and the controls, per architecture (Frankle & Carbin's Figure 3/4 layout).
ticket_imp_trajectories: test accuracy against training iterations for the IMP rounds nearest
  100, 51, 21, 7, 3.6 and 1.9% of weights remaining.
ticket_transfer: own vs transferred vs random ticket against % of weights remaining, per
  experiment and direction, and per experiment a last panel of transferred - own for every side
  at the same round (so at the same sparsity), e.g. the label split's gap growing to round 15.
"""
import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, NullFormatter

from utils.plots import FigureSpec, col
from utils.plots.common import band, errorbar, hline, seeds_note

COMMAND = "python ticket_transfer.py"
TRAJECTORY_DENSITIES = (1.0, 0.51, 0.21, 0.07, 0.036, 0.019)
REFERENCE_TICKS = (100, 51.3, 21.1, 7.0, 3.6, 1.9, 0.9, 0.5, 0.3, 0.1)  # % remaining, as Frankle & Carbin
STYLES = {"own": ("o-", "tab:red", "own ticket (its IMP mask, shared init)"),
          "transferred": ("s-", "tab:blue", "transferred ticket (the other side's mask, shared init)"),
          "random": ("^:", "tab:brown", "control: random mask, same per-layer counts"),
          "reinit": ("v:", "tab:purple", "control: own mask, fresh initialisation")}


def summary_rows(res):
    return res.csv("ticket_transfer", "summary.csv")


def kind(row):
    """'own', 'transferred', 'random' or 'reinit'."""
    if row["ticket"] != "imp":
        return row["ticket"]
    return "own" if row["mask_from"] == row["trained_on"] else "transferred"


def groups(rows, experiments):
    """{(experiment, arch, trained_on): rows} in file order, for the listed experiments."""
    out = {}
    for r in rows:
        if r["experiment"] in experiments:
            out.setdefault((r["experiment"], r["arch"], r["trained_on"]), []).append(r)
    return out


def _curves(ax, rows):
    """One line per kind: final accuracy against % of weights remaining; round 00 joins every line."""
    dense = [r for r in rows if int(r["round"]) == 0]
    for k, (style, color, label) in STYLES.items():
        sub = sorted((r for r in rows if kind(r) == k and int(r["round"]) > 0), key=lambda r: -r["density"])
        if not sub:
            continue
        sub = dense + sub
        errorbar(ax, sub, [100 * r["density"] for r in sub], "final_acc", style, color=color, label=label, ms=4)
    if dense:
        hline(ax, dense[0], "final_acc", color="black", ls=":", lw=1,
                   label=f"dense ({dense[0]['final_acc']:.2f}%)")
    _remaining_axis(ax, [100 * r["density"] for r in rows])
    ax.set_ylabel("test accuracy after training (%)")


def _remaining_axis(ax, xs):
    """x: % of weights remaining, log scale, Frankle & Carbin's ticks, pruning to the right."""
    ax.set_xscale("log")
    xs = sorted(set(xs), reverse=True)
    ticks = [t for t in REFERENCE_TICKS if min(xs) * 0.95 <= t <= max(xs) * 1.05]
    ax.set_xticks(ticks if len(ticks) >= 3 else xs[:: max(1, len(xs) // 8)])
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.invert_xaxis()  # pruning proceeds to the right, as in Frankle & Carbin
    ax.set_xlabel("% of weights remaining (log)")
    ax.grid(alpha=0.3, which="both")


def fig_imp_accuracy(res):
    by_arch = {}
    for (experiment, arch, side), rows in groups(summary_rows(res), {"imp"}).items():
        by_arch[arch] = rows
    if not by_arch:
        return None
    fig, axes = plt.subplots(1, len(by_arch), figsize=(6.2 * len(by_arch), 4.6), squeeze=False)
    for ax, (arch, rows) in zip(axes[0], by_arch.items()):
        _curves(ax, rows)
        ax.set_title(f"{arch} on MNIST")
        ax.legend(fontsize=7)
    fig.suptitle("Winning tickets: accuracy of IMP tickets and controls vs weights remaining" + seeds_note(res))
    fig.tight_layout()
    return fig


def iterations_per_epoch(summary):
    cfg = (summary or {}).get("config", {})
    if cfg.get("train_images") and cfg.get("batch_size"):
        return math.ceil(cfg["train_images"] / cfg["batch_size"])
    return None


def fig_imp_trajectories(res):
    rows = [r for r in summary_rows(res) if r["experiment"] == "imp" and kind(r) == "own"]
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    if not archs:
        return None
    fig, axes = plt.subplots(1, len(archs), figsize=(6.2 * len(archs), 4.6), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        own = [r for r in rows if r["arch"] == arch]
        picked = []
        for d in TRAJECTORY_DENSITIES:  # the round nearest each target, on a log scale
            best = min(own, key=lambda r: abs(math.log(r["density"]) - math.log(d)))
            if best not in picked:
                picked.append(best)
        colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(picked)))
        per_epoch = None
        for color, r in zip(colors, picked):
            folder = ("ticket_transfer", "imp", arch, f"imp_{r['mask_from']}_on_{r['trained_on']}",
                      f"round_{int(r['round']):02d}")
            traj = res.csv(*folder, "trajectory.csv")  # several seeds: their mean (and sd)
            if not traj:
                continue
            per_epoch = iterations_per_epoch(res.json(*folder, "summary.json"))
            band(ax, traj, [e * (per_epoch or 1) for e in col(traj, "epoch")], "test_acc", color=color,
                 label=f"{100 * r['density']:.3g}% remaining (round {int(r['round'])})")
        ax.set(title=f"{arch}: IMP tickets during training",
               xlabel="training iterations" if per_epoch else "epoch", ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Winning tickets learn faster: test accuracy vs iterations at chosen sparsities" + seeds_note(res))
    fig.tight_layout()
    return fig


def _same_round_gap(ax, g, sides):
    """Transferred - own final accuracy against % of weights remaining, one line per side, each
    point a round where both were trained (the two masks have the same per-layer counts)."""
    xs = []
    for (experiment, arch, side), marker in zip(sides, "os^v"):
        rounds = {}
        for r in g[(experiment, arch, side)]:
            if int(r["round"]) > 0 and kind(r) in ("own", "transferred"):
                rounds.setdefault(int(r["round"]), {})[kind(r)] = r
        pts = sorted(((100 * v["own"]["density"], v["transferred"]["final_acc"] - v["own"]["final_acc"])
                      for v in rounds.values() if len(v) == 2), reverse=True)
        xs += [x for x, _ in pts]
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker + "-", ms=4,
                    label=f"trained on {side} (transferred - own)")
    ax.axhline(0.0, color="black", ls=":", lw=1)
    if xs:
        _remaining_axis(ax, xs)
    ax.set_ylabel("transferred - own (points)")
    ax.set_title(f"{sides[0][0]} / {sides[0][1]}: transferred - own at the same round", fontsize=9)
    ax.legend(fontsize=7)


def fig_transfer(res):
    g = groups(summary_rows(res), {"data", "labels", "optimizer"})
    if not g:
        return None
    pairs = list(dict.fromkeys((e, a) for e, a, _ in g))
    ncols = max(sum(1 for k in g if k[:2] == p) for p in pairs) + 1  # the sides, then their gap
    fig, axes = plt.subplots(len(pairs), ncols, figsize=(6 * ncols, 4.2 * len(pairs)), squeeze=False)
    for i, pair in enumerate(pairs):
        sides = [k for k in g if k[:2] == pair]
        for j in range(ncols):
            ax = axes[i, j]
            if j == ncols - 1 and len(sides) >= 2:
                _same_round_gap(ax, g, sides)
                continue
            if j >= len(sides):
                ax.set_axis_off()
                continue
            experiment, arch, side = sides[j]
            rows = g[sides[j]]
            _curves(ax, rows)
            others = sorted({r["mask_from"] for r in rows if kind(r) == "transferred"})
            ax.set_title(f"{experiment} / {arch}: trained on {side}, masks from {side} and {', '.join(others)}",
                         fontsize=9)
            ax.legend(fontsize=7)
    fig.suptitle("Do tickets transfer? Own vs transferred vs random tickets, per experiment and direction"
                 + seeds_note(res))
    fig.tight_layout()
    return fig


FIGURES = [
    FigureSpec("ticket_imp_accuracy", fig_imp_accuracy, "ticket_transfer/summary.csv (experiment imp)",
               f"{COMMAND} --experiments imp"),
    FigureSpec("ticket_imp_trajectories", fig_imp_trajectories,
               "ticket_transfer/imp/<arch>/imp_full_on_full/round_*/trajectory.csv", f"{COMMAND} --experiments imp"),
    FigureSpec("ticket_transfer", fig_transfer, "ticket_transfer/summary.csv (experiments data, labels, optimizer)",
               f"{COMMAND} --experiments data labels optimizer"),
]
