"""Figures of pruning at initialisation (prune_at_init.py), read from results/prune_at_init/ only.

`prune_at_init_ablations`: a panel per method, final test accuracy against sparsity, a line per
ablation, with the random-pruning baseline, the dense run and (when present) pruning after
training from Tasks 2-3 for reference; a black ✕ marks a collapsed mask (a layer left empty: not a
test of its score) with its chosen_by_score. `prune_at_init_layer_density`: the fraction of each
layer's weights every method keeps (the `original` masks), a panel per sparsity.
"""
import matplotlib.pyplot as plt
import numpy as np

from utils.plots import FigureSpec, pct
from utils.plots.common import errorbar, hline, mark_collapse, seeds_note

RUN = "prune_at_init"
METHODS = ("magnitude", "snip", "grasp", "synflow", "random")
METHOD_NAMES = {"random": "random", "magnitude": "magnitude", "snip": "SNIP", "grasp": "GraSP",
                "synflow": "SynFlow"}
ABLATION_STYLES = {"original": ("o-", "tab:blue", "original"),
                   "shuffle": ("s--", "tab:orange", "shuffled within layers"),
                   "reinit": ("^--", "tab:green", "re-initialised"),
                   "invert": ("v:", "tab:red", "inverted scores")}


def summary_rows(res):
    return res.csv(RUN, "summary.csv")


def select(rows, method, ablation):
    return sorted((r for r in rows if r.get("method") == method and r.get("ablation") == ablation),
                  key=lambda r: r["sparsity"])


def dense_row(rows):
    """The row of the shared sparsity-0 run (method none), or None."""
    return next((r for r in rows if r.get("method") == "none"), None)


def dense_accuracy(rows):
    """The shared sparsity-0 run's accuracy, or None."""
    hit = dense_row(rows)
    return hit["final_acc"] if hit else None


def fig_ablations(res):
    rows = summary_rows(res)
    methods = [m for m in METHODS if any(r.get("method") == m for r in rows)]
    if not methods:
        return None
    dense = dense_accuracy(rows)
    random_rows = select(rows, "random", "original")
    magnitude_after = res.magnitude  # Task 2: pruned after training, retrained
    oneshot_after = sorted((r for r in res.lottery if r.get("method") == "oneshot"), key=lambda r: r["sparsity"])
    cols = min(len(methods), 3)
    nrows = -(-len(methods) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 4.2 * nrows), squeeze=False, sharey=True)
    for ax, method in zip(axes.flat, methods):
        for ablation, (style, color, label) in ABLATION_STYLES.items():
            sub = select(rows, method, ablation)
            if sub:
                errorbar(ax, sub, [100 * r["sparsity"] for r in sub], "final_acc", style, color=color, label=label)
                mark_collapse(ax, sub, "final_acc")
        if random_rows and method != "random":
            errorbar(ax, random_rows, [100 * r["sparsity"] for r in random_rows], "final_acc", "x:",
                     color="tab:gray", label="random pruning at init")
        if dense is not None:
            hline(ax, dense_row(rows), "final_acc", color="black", ls=":", label=f"dense ({dense:.2f}%)")
        if magnitude_after:
            errorbar(ax, magnitude_after, [100 * r["sparsity"] for r in magnitude_after], "retrained_acc", "D-",
                     color="tab:purple", alpha=0.6, label="magnitude after training (Task 2)")
        if oneshot_after:
            errorbar(ax, oneshot_after, [100 * r["sparsity"] for r in oneshot_after], "retrained_acc", "P-",
                     color="tab:brown", alpha=0.6, label="one-shot ticket (Task 3)")
        ax.set(title=f"{METHOD_NAMES[method]} at initialisation", xlabel="sparsity (% of prunable weights removed)",
               ylabel="test accuracy after training (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(methods):]:
        ax.set_axis_off()
    fig.suptitle("Pruning at initialisation: does each ablation keep the trained accuracy?" + seeds_note(res))
    fig.tight_layout()
    return fig


def layer_reports(res, method, sparsity):
    report = res.json(RUN, method, "original", f"sparsity_{100 * sparsity:g}", "sparsity_report.json")
    return report["layers"] if report else None


def fig_layer_density(res):
    rows = summary_rows(res)
    sparsities = sorted({r["sparsity"] for r in rows if r.get("method") in METHODS and r["sparsity"] > 0})
    if not sparsities:
        return None
    fig, axes = plt.subplots(len(sparsities), 1, figsize=(10, 3.2 * len(sparsities)), squeeze=False)
    for ax, s in zip(axes[:, 0], sparsities):
        names = None
        for method in METHODS:
            layers = layer_reports(res, method, s)
            if not layers:
                continue
            names = list(layers)
            ax.plot(np.arange(len(names)), [100 * (1 - v["sparsity"]) for v in layers.values()], "o-",
                    ms=3, label=METHOD_NAMES[method])
        ax.axhline(100 * (1 - s), color="black", ls=":", label=f"overall ({pct(1 - s)} kept)")
        if names:
            ax.set_xticks(np.arange(len(names)))
            ax.set_xticklabels([n.removesuffix(".weight") for n in names], rotation=90, fontsize=6)
        ax.set(ylabel="weights kept (%)", title=f"{pct(s)} sparsity: per-layer density of each method's mask")
        ax.set_yscale("symlog", linthresh=0.1)  # a collapsed layer (0% kept) still shows
        ax.set_ylim(0, 150)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    return fig


FIGURES = [
    FigureSpec("prune_at_init_ablations", fig_ablations, f"{RUN}/summary.csv", "python prune_at_init.py"),
    FigureSpec("prune_at_init_layer_density", fig_layer_density,
               f"{RUN}/<method>/original/sparsity_*/sparsity_report.json", "python prune_at_init.py"),
]
