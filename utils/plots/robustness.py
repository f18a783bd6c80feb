"""The bonus figure: clean / FGSM / PGD accuracy against sparsity."""
import re

import matplotlib.pyplot as plt

from utils.plots.common import FigureSpec, errorbar, seeds_note


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
            errorbar(ax, sub, [100 * (r["sparsity"] or 0) for r in sub], key, style,
                     label=f"{family} ({arch}, {training} training)")
    for ax, name in zip(axes, ("clean images", "FGSM attack", "PGD attack")):
        ax.set(xlabel="sparsity (% of weights removed)", title=name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle("Bonus: are pruned networks more robust? Accuracy under attack vs sparsity" + seeds_note(res))
    fig.tight_layout()
    return fig


FIGURES = [
    FigureSpec("robustness", fig_robustness, "robustness/summary.csv", "python robustness.py"),
]
