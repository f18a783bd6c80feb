"""The leaderboard's figures: every method the results hold (utils/leaderboard.py), test accuracy
against weight sparsity and against the training cost each method paid."""
import matplotlib.pyplot as plt

from utils.leaderboard import METHODS, Leaderboard
from utils.plots.common import FigureSpec, errorbar, seeds_note
from utils.replicates import MeanRow

NEEDS = "dense/summary.json and a pruning task's summary.csv"
COMMAND = "python run_all.py (or any of the pruning scripts after python train_dense.py)"
MARKERS = "osDv^<>pP*Xh"


def pruned_board(res):
    """The Leaderboard, or None when the results hold no pruned network (or no dense run)."""
    if not res.dense_summary:
        return None
    board = Leaderboard(res)
    return board if any(e.family != "dense" for e in board.entries) else None


def lines(board):
    """{legend entry: entries by sparsity} of the pruned networks, the methods in METHODS' order."""
    order = {key: i for i, (key, _, _) in enumerate(METHODS)}
    out = {}
    for e in sorted(board.entries, key=lambda e: order[e.family]):  # stable: by sparsity within a method
        if e.family != "dense":
            out.setdefault(e.line, []).append(e)
    return out


def as_rows(entries, x):
    """Entries as rows errorbar() reads: accuracy with its sd over seeds, and the x value."""
    return [MeanRow({"x": x(e), "acc": e.acc}, {"acc": e.sd}, {"acc": e.n}) for e in entries]


def _styles(names):
    colors = plt.get_cmap("tab20")(range(20))
    return {name: (MARKERS[i % len(MARKERS)], colors[i % 20]) for i, name in enumerate(names)}


def _dense(board):
    return next((e for e in board.entries if e.family == "dense"), None)


def _canvas(res):
    """(board, {line name: entries}, {line name: (marker, colour)}, fig, ax, dense entry), or None
    when the results hold no pruned method."""
    board = pruned_board(res)
    if board is None:
        return None
    groups = lines(board)
    fig, ax = plt.subplots(figsize=(10, 6))
    return board, groups, _styles(groups), fig, ax, _dense(board)


def fig_leaderboard_sparsity(res):
    canvas = _canvas(res)
    if canvas is None:
        return None
    board, groups, styles, fig, ax, dense = canvas
    if dense:
        ax.axhline(dense.acc, color="black", ls=":", label=f"dense ({dense.acc:.2f}%)")
    for name, entries in groups.items():
        marker, color = styles[name]
        errorbar(ax, as_rows(entries, lambda e: 100 * e.sparsity), "x", "acc", f"{marker}-", color=color,
                 label=name, ms=5, lw=1)
    ax.set(xlabel="weight sparsity (% of prunable weights removed; Early-Bird, EarlyCroP: measured)",
           ylabel="test accuracy (%)", title="Leaderboard: every method, test accuracy vs sparsity" + seeds_note(res))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    return fig


def fig_leaderboard_cost(res):
    canvas = _canvas(res)
    if canvas is None:
        return None
    board, groups, styles, fig, ax, dense = canvas
    if dense:
        errorbar(ax, as_rows([dense], lambda e: 1.0), "x", "acc", "k*", ms=12,
                 label=f"dense, trained once ({dense.acc:.2f}%)")
    for name, entries in groups.items():
        marker, color = styles[name]
        rows = as_rows(entries, lambda e: e.cost / board.dense_cost)
        errorbar(ax, rows, "x", "acc", marker, color=color, label=name, ms=6)
        for e, r in zip(entries, rows):
            ax.annotate(f"{100 * e.sparsity:.0f}%", (r["x"], r["acc"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points", color=color)
    ax.set_xscale("log")
    ax.set(xlabel="training cost paid, × training the dense network once "
                  f"({board.dense_epochs:g} epochs; Σ epochs × 3 × forward FLOPs, dense epochs before pruning "
                  "included, masked weights not counted)",
           ylabel="test accuracy (%)",
           title="Leaderboard: test accuracy vs training cost (labels: sparsity)" + seeds_note(res))
    ax.xaxis.label.set_fontsize(8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    return fig


FIGURES = [
    FigureSpec("leaderboard_accuracy_vs_sparsity", fig_leaderboard_sparsity, NEEDS, COMMAND),
    FigureSpec("leaderboard_accuracy_vs_cost", fig_leaderboard_cost, NEEDS, COMMAND),
]
