"""EarlyCroP's figures, from results/earlycrop/{summary.csv,detection.json} alone.

`earlycrop_accuracy`: test accuracy against weight sparsity, one panel for the structured (-S)
methods and one for the unstructured (-U) ones, the dense network as a line. `earlycrop_detector`:
what the pruning-time detectors saw: Δ_t = ‖θ_t − θ₀‖² (and d_t = ‖θ_t − θ_1‖/‖θ_1‖), the paper
rule's ratio |Δ_t − Δ_{t−1}| / Δ₁ and the authors' rule's |d_t − d_{t−1}| / d_2, both against the
same 1 − s, each sparsity's threshold and prune epoch (of the rule that chose), and the
learning-rate milestones (a rule that fires just after one measures the schedule).
"""
import matplotlib.pyplot as plt

from utils.plots import FigureSpec, pct
from utils.plots.common import errorbar, hline, seeds_note

STRUCTURED = ["earlycrop_s", "crop_s", "random_s", "early_bird"]
UNSTRUCTURED = ["earlycrop_u", "crop_u", "random_u", "snip", "grasp", "ltr"]
LABELS = {"earlycrop_s": "EarlyCroP-S", "crop_s": "CroP-S (at init)", "random_s": "Random-S (at init)",
          "early_bird": "Early-Bird", "earlycrop_u": "EarlyCroP-U", "crop_u": "CroP-U (at init)",
          "random_u": "Random-U (at init)", "snip": "SNIP (at init)", "grasp": "GraSP (at init)",
          "ltr": "LTR (IMP)"}


def summary_rows(res):
    """Rows of results/earlycrop/summary.csv that have a measured accuracy."""
    return [r for r in res.csv("earlycrop", "summary.csv") if isinstance(r.get("test_acc"), float)]


def fig_earlycrop_accuracy(res):
    rows = summary_rows(res)
    if not any(r["method"] != "dense" for r in rows):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    dense = next((r for r in rows if r["method"] == "dense"), None)
    for ax, methods, title in ((axes[0], STRUCTURED, "structured (-S): channels removed"),
                               (axes[1], UNSTRUCTURED, "unstructured (-U): weights masked")):
        for method in methods:
            sub = sorted((r for r in rows if r["method"] == method), key=lambda r: r["weight_sparsity"])
            if sub:
                style = "o-" if method.startswith("earlycrop") else "s--"
                errorbar(ax, sub, [100 * r["weight_sparsity"] for r in sub], "test_acc", style,
                         label=LABELS.get(method, method))
        if dense:
            hline(ax, dense, "test_acc", color="black", ls=":", label=f"dense ({dense['test_acc']:.2f}%)")
        ax.set(xlabel="weight sparsity (% of the prunable weights gone)", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("test accuracy after training (%)")
    fig.suptitle("EarlyCroP: does pruning early by gradient flow keep the accuracy?" + seeds_note(res))
    fig.tight_layout()
    return fig


def fig_earlycrop_detector(res):
    det = res.replicates[0].json("earlycrop", "detection.json")  # each seed's detector sees its own run
    if not det or not det.get("delta"):
        return None
    fig, (ax_d, ax_r) = plt.subplots(1, 2, figsize=(12, 4.5))
    epochs = list(range(len(det["delta"])))
    ax_d.plot(epochs, det["delta"], ".-", color="black")
    ax_d.set(xlabel="dense training epoch t", ylabel="Δ_t = ‖θ_t − θ_0‖²",
             title="distance travelled (Δ_t from θ_0; d_t, gray, from θ_1)")
    if det.get("d"):
        twin = ax_d.twinx()
        twin.plot(range(1, len(det["d"])), det["d"][1:], ".-", color="tab:gray", label="d_t = ‖θ_t − θ_1‖/‖θ_1‖")
        twin.set_ylabel("d_t (gray)")
    ratio = det.get("ratio") or []
    xs = [t for t, v in enumerate(ratio) if v is not None]
    ax_r.plot(xs, [ratio[t] for t in xs], ".-", color="black", label="|Δ_t − Δ_{t−1}| / Δ_1 (paper)")
    change = det.get("change") or []
    d2 = det["d"][2] if det.get("d") and len(det["d"]) > 2 else None
    xs = [t for t, v in enumerate(change) if v is not None and t >= 3]
    if xs and d2:
        ax_r.plot(xs, [change[t] / d2 for t in xs], ".-", color="tab:gray", label="|d_t − d_{t−1}| / d_2 (authors)")
    for i, m in enumerate(det.get("milestones") or []):
        for ax in (ax_d, ax_r):
            ax.axvline(m + 0.5, color="tab:red", lw=3, alpha=0.25)
        ax_r.plot([], [], color="tab:red", lw=3, alpha=0.25, label="lr ×0.1 after these epochs" if i == 0 else None)
    colors = plt.get_cmap("tab10")
    rule = det.get("detector", "paper")
    for i, (key, info) in enumerate(sorted(det.get("sparsities", {}).items(), key=lambda kv: float(kv[0]))):
        c = colors(i)
        level = info.get("factor", info["threshold"])  # the authors' τ over d_2 is their factor
        ax_r.axhline(level, color=c, ls=":", label=f"threshold {level:.3g} (sparsity {pct(float(key))})")
        override = det.get("prune_epoch_override")
        e = override if override is not None else info["prune_epoch"]
        how = ("set by --prune-epoch" if override is not None else
               f"{rule} rule, " + ("fired" if info["fired"] else "not fired: cap"))
        for ax in (ax_d, ax_r):
            ax.axvline(e, color=c, ls="--", alpha=0.7)
        ax_d.plot([], [], ls="--", color=c, label=f"prune at epoch {e} (sparsity {pct(float(key))}, {how})")
    ax_r.set_yscale("log")
    ax_r.set(xlabel="dense training epoch t", ylabel="relative change", title="the detectors' series")
    for ax in (ax_d, ax_r):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("EarlyCroP: when do the weights stop moving fast? (prune at the first change below the threshold)"
                 + (f" (seed {res.seeds[0]} of {len(res.seeds)})" if res.multi_seed else ""))
    fig.tight_layout()
    return fig


FIGURES = [
    FigureSpec("earlycrop_accuracy", fig_earlycrop_accuracy, "earlycrop/summary.csv", "python earlycrop.py"),
    FigureSpec("earlycrop_detector", fig_earlycrop_detector, "earlycrop/detection.json", "python earlycrop.py"),
]
