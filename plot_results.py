"""Regenerate every figure in plots/ (PNG and PDF) from the files in results/ alone.

    python plot_results.py                                  # results/ -> plots/
    python plot_results.py --results-dir /tmp/r --plots-dir /tmp/p

A figure whose input is missing is skipped with one line naming the command that makes it.
"""
from pathlib import Path

import matplotlib.pyplot as plt

from utils.config import make_parser
from utils.errors import UserError, cli_main
from utils.plots import FIGURES, Results, build_figure, save_figure
from utils.plots_ticket_transfer import FIGURES as TICKET_TRANSFER_FIGURES

ALL_FIGURES = FIGURES + TICKET_TRANSFER_FIGURES  # task modules' figures after the core ones


def parse_args(argv):
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default="results", help="where the task scripts wrote CSV / JSON")
    parser.add_argument("--plots-dir", default="plots", help="where the figures go")
    return parser.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    results_dir, plots_dir = Path(args.results_dir), Path(args.plots_dir)
    if not results_dir.is_dir():
        raise UserError(f"no results folder {results_dir}; run python run_all.py (or the task "
                        "scripts) first, or pass --results-dir")

    # Each figure from its own files; a missing input skips just that figure.
    res = Results(results_dir)
    written = 0
    for spec in ALL_FIGURES:
        fig, skipped = build_figure(spec, res)
        if skipped:
            print(skipped)
            continue
        save_figure(fig, plots_dir / spec.name)
        plt.close(fig)
        written += 1
        print(f"wrote {plots_dir / spec.name}.png and .pdf")
    print(f"{written} of {len(ALL_FIGURES)} figures written to {plots_dir}/")


if __name__ == "__main__":
    main()
