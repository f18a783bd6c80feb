"""The deployed networks' figure: test accuracy against the latency measured at batch 128 on the
CPU (deploy.py's results/deploy/summary.csv), one point per network and runnable form."""
import matplotlib.pyplot as plt

from utils.plots.common import FigureSpec, seeds_note
from utils.plots.leaderboard import _styles, lines, pruned_board

NEEDS = "deploy/summary.csv (and the leaderboard's inputs)"
COMMAND = "python deploy.py (or python run_all.py)"
FORM_MARKERS = {"dense": "*", "compact": "s", "dense_zeros": "o", "sparse_mm": "x", "semi_structured_24": "D"}


def deploy_rows(res):
    """deploy/summary.csv's rows (several seeds: averaged over seeds per source, form and device)."""
    return res.csv("deploy", "summary.csv")


def measured(res, device="cpu"):
    """{run summary (the rows' source): {form: row}} of the forms timed on `device`."""
    out = {}
    for r in deploy_rows(res):
        if r.get("device") == device and isinstance(r.get("latency_ms_b128"), float):
            out.setdefault(r["source"], {})[r["form"]] = r
    return out


def fig_accuracy_vs_latency(res):
    board = pruned_board(res)
    rows = measured(res)
    if board is None or not rows:
        return None
    groups = lines(board)
    styles = _styles(groups)
    fig, ax = plt.subplots(figsize=(10, 6))
    dense = next((e for e in board.entries if e.family == "dense"), None)
    for e in ([dense] if dense else []) + [e for entries in groups.values() for e in entries]:
        color = "black" if e.family == "dense" else styles[e.line][1]
        for form, r in rows.get(e.run_summary, {}).items():
            ax.plot(r["latency_ms_b128"], e.acc, FORM_MARKERS.get(form, "o"), color=color, ms=7 if form != "dense" else 12,
                    mfc="none" if form == "sparse_mm" else color)
    for name, (marker, color) in styles.items():
        ax.plot([], [], "o", color=color, label=name)
    for form, marker in FORM_MARKERS.items():
        ax.plot([], [], marker, color="gray", mfc="none" if form == "sparse_mm" else "gray", label=f"form: {form}")
    ax.set_xscale("log")
    ax.set(xlabel="measured latency, batch 128, CPU (ms, median of timed passes; noisy: docs/deploy.md)",
           ylabel="test accuracy (%)", title="Deployed: test accuracy vs measured latency" + seeds_note(res))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, ncol=2, loc="best")
    fig.tight_layout()
    return fig


FIGURES = [FigureSpec("deploy_accuracy_vs_latency", fig_accuracy_vs_latency, NEEDS, COMMAND)]


def leaderboard_cells(res):
    """{run summary: [CPU ms at b128 of its fastest form, peak MB, smallest disk MB]} as table cells
    (the form named in brackets), for the leaderboard's table; {} without measurements."""
    out = {}
    for source, forms in measured(res).items():
        fast = min(forms.values(), key=lambda r: r["latency_ms_b128"])
        disks = [r for r in deploy_rows(res) if r["source"] == source and r.get("device") == "cpu"
                 and isinstance(r.get("disk_mb"), float)]
        small = min(disks, key=lambda r: r["disk_mb"]) if disks else None
        out[source] = [f"{fast['latency_ms_b128']:.1f} ({fast['form']})", f"{fast['peak_mem_mb']:.1f}",
                       f"{small['disk_mb']:.3f} ({small['form']})" if small else "n/a"]
    return out
