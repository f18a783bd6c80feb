"""The figure across Tasks 2 and 3: which pruned network keeps the dense accuracy?"""
import matplotlib.pyplot as plt

from utils.plots.common import FigureSpec, arch_label, errorbar, hline, mark_collapse, seeds_note

LOTTERY_STYLES = {"oneshot": ("s-", "tab:orange", "one-shot ticket, trained (Task 3)"),
                  "imp": ("D-", "tab:red", "IMP ticket, trained (Task 3)"),
                  "reinit": ("v:", "tab:purple", "control: same mask, re-initialised"),
                  "random": ("^:", "tab:brown", "control: random mask, same layer sparsity")}


def fig_accuracy_vs_sparsity(res):
    mag, lot, dense = res.magnitude, res.lottery, res.dense_summary
    if not mag and not lot:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.2))
    dense_row, dense_col = (dense, "test_acc") if dense else ((mag or lot)[0], "dense_acc")
    dense_acc = dense_row.get(dense_col)
    if dense_acc is not None:
        hline(ax, dense_row, dense_col, color="black", ls=":", label=f"dense ({dense_acc:.2f}%)")
    # Task 2's sparsity-0 row is the dense network fine-tuned with the same schedule: a reference
    # line, not a point of the pruning curves.
    tuned = [r for r in mag if not r["sparsity"]]
    mag = [r for r in mag if r["sparsity"]]
    if tuned:
        hline(ax, tuned[0], "retrained_acc", color="tab:green", ls="-.",
                   label=f"dense, fine-tuned like Task 2 ({tuned[0]['retrained_acc']:.2f}%)")
    if mag:
        x = [100 * r["sparsity"] for r in mag]
        errorbar(ax, mag, x, "pruned_acc", "x--", color="tab:gray", label="magnitude pruned, not retrained")
        errorbar(ax, mag, x, "retrained_acc", "o-", color="tab:blue", label="magnitude pruned + retrained (Task 2)")
        mark_collapse(ax, mag, "retrained_acc")
    for method, (style, color, label) in LOTTERY_STYLES.items():
        rows = sorted((r for r in lot if r.get("method") == method), key=lambda r: r["sparsity"])
        if rows:
            errorbar(ax, rows, [100 * r["sparsity"] for r in rows], "retrained_acc", style, color=color, label=label)
            mark_collapse(ax, rows, "retrained_acc")
    ax.set(xlabel="sparsity (% of prunable weights removed)", ylabel="test accuracy (%)",
           title=f"Which pruned {arch_label(res)} keeps the dense accuracy? Test accuracy vs sparsity"
           + seeds_note(res))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


FIGURES = [
    FigureSpec("accuracy_vs_sparsity", fig_accuracy_vs_sparsity, "magnitude/summary.csv or lottery/summary.csv",
               "python prune_magnitude.py; python lottery_imp.py"),
]
