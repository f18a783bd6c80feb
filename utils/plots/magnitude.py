"""Task 2's figure: does retraining recover each magnitude-pruned network?"""
from utils.plots.common import FigureSpec, arch_label, folder_fraction, seeds_note, sparsity_label, trajectory_grid


def fig_magnitude_trajectories(res):
    runs = res.trajectories("magnitude/sparsity_*")
    if not runs:
        return None
    runs = dict(sorted(runs.items(), key=lambda kv: folder_fraction(kv[0].rsplit("/", 1)[-1])))
    return trajectory_grid(runs, f"Task 2: does retraining recover magnitude-pruned {arch_label(res, 'magnitude')}? "
                           f"(epoch 0 = pruned, not retrained){seeds_note(res)}", sparsity_label, "plasma")


FIGURES = [
    FigureSpec("magnitude_trajectories", fig_magnitude_trajectories, "magnitude/sparsity_*/trajectory.csv",
               "python prune_magnitude.py"),
]
