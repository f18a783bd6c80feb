"""Step 1's figure: how the dense network learns."""
import matplotlib.pyplot as plt

from utils.plots.common import FigureSpec, arch_label, band, seeds_note


def fig_dense_trajectory(res):
    rows = res.dense_trajectory
    if not rows:
        return None
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for split, style in (("train", "-"), ("test", "--")):
        band(ax_loss, rows, "epoch", f"{split}_loss", style, label=split)
        band(ax_acc, rows, "epoch", f"{split}_acc", style, label=split)
    ax_loss.set(xlabel="epoch (0 = initialisation)", ylabel="cross-entropy loss (nats)", title="loss")
    ax_acc.set(xlabel="epoch (0 = initialisation)", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    final = rows[-1]["test_acc"]
    fig.suptitle(f"Step 1: how the dense {arch_label(res)} learns (final test accuracy {final:.2f}%){seeds_note(res)}")
    fig.tight_layout()
    return fig


FIGURES = [
    FigureSpec("dense_trajectory", fig_dense_trajectory, "dense/trajectory.csv", "python train_dense.py"),
]
