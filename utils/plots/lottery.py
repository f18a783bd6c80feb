"""Task 3's figures: training each ticket (one-shot, every IMP round) and each control."""
from utils.plots.common import FigureSpec, folder_fraction, seeds_note, sparsity_label, trajectory_grid


def lottery_figure(method, title):
    """A builder of the trajectory grid of every lottery/<method>/sparsity_* run."""
    def build(res):
        runs = res.trajectories(f"lottery/{method}/sparsity_*")
        if not runs:
            return None
        runs = dict(sorted(runs.items(), key=lambda kv: folder_fraction(kv[0].rsplit("/", 1)[-1])))
        return trajectory_grid(runs, title + seeds_note(res), sparsity_label, "plasma")
    return build


FIGURES = [
    FigureSpec("lottery_oneshot_trajectories", lottery_figure(
        "oneshot", "Task 3: training one-shot lottery tickets (mask from trained weights, reset to init)"),
        "lottery/oneshot/sparsity_*/trajectory.csv", "python lottery_imp.py --mode oneshot"),
    FigureSpec("lottery_imp_trajectories", lottery_figure(
        "imp", "Task 3: training iterative-magnitude-pruning (IMP) tickets, every round"),
        "lottery/imp/sparsity_*/trajectory.csv", "python lottery_imp.py --mode imp"),
    FigureSpec("lottery_control_reinit_trajectories", lottery_figure(
        "reinit", "Task 3 control: the ticket's mask with a fresh random initialisation"),
        "lottery/reinit/sparsity_*/trajectory.csv", "python lottery_imp.py --controls reinit"),
    FigureSpec("lottery_control_random_trajectories", lottery_figure(
        "random", "Task 3 control: a random mask with the ticket's per-layer sparsity"),
        "lottery/random/sparsity_*/trajectory.csv", "python lottery_imp.py --controls random"),
]
