"""Every figure, built from results/ alone.

`common` holds the readers (`Results`, `read_csv`, `read_matrix`), `FigureSpec`, `save_figure`
and small helpers; each task module exports `FIGURES`, a list of `FigureSpec(name, build, needs,
command)`. A new task adds `utils/plots/<task>.py` and one line below.
"""
# The shared names first, so a task module may import them from `utils.plots` itself.
from utils.plots.common import (FigureSpec, Results, arch_label, build_figure, col, pct, read_csv,  # noqa: I001
                                read_matrix, save_figure)
from utils.plots import earlycrop  # noqa: E402
from utils.plots import prune_at_init  # noqa: E402
from utils.plots import three_regime  # noqa: E402
from utils.plots import ticket_transfer  # noqa: E402
from utils.plots import leaderboard  # noqa: E402
from utils.plots import deploy  # noqa: E402
from utils.plots import dense, early_bird, lottery, magnitude, overview, robustness  # noqa: E402

__all__ = ["FIGURES", "FigureSpec", "Results", "arch_label", "build_figure", "col", "pct", "read_csv",
           "read_matrix", "save_figure"]

FIGURES = [
    *dense.FIGURES,
    *magnitude.FIGURES,
    *lottery.FIGURES,
    *overview.FIGURES,
    *early_bird.FIGURES,
    *robustness.FIGURES,
    *prune_at_init.FIGURES,
    *earlycrop.FIGURES,
    *three_regime.FIGURES,
    *ticket_transfer.FIGURES,
    *leaderboard.FIGURES,
    *deploy.FIGURES,
]
