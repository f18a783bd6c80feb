"""Regenerate every figure in plots/ (PNG and PDF) from the files in results/ alone.

    python plot_results.py                                  # results/ -> plots/
    python plot_results.py --results-dir /tmp/r --plots-dir /tmp/p

A figure whose input is missing is skipped with one line naming the command that makes it. A
results folder of `seed_<s>/` replicates (run_all.py --seeds) is drawn as their mean with error
bars or bands of ± the seed-to-seed sd, after writing each task's `aggregate.csv`. When neither
the results nor the code changed since the figures were drawn (plots/.inputs.json), nothing is
redrawn.
"""
from pathlib import Path

import matplotlib.pyplot as plt

from utils.config import make_parser
from utils.errors import UserError, cli_main
from utils.freshness import inputs_digest, mark_up_to_date, up_to_date
from utils.plots import FIGURES, Results, build_figure, save_figure
from utils.replicates import write_aggregates

INPUTS_STAMP = ".inputs.json"  # the digest of what the figures were drawn from (utils/freshness.py)


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

    # Step 1: several seeds (seed_<s>/ folders): each task's aggregate.csv (mean, std, n per column).
    for path in write_aggregates(results_dir):
        print(f"wrote {path}")

    # Step 2: nothing to do when neither the results nor the code changed since the figures were made.
    stamp = plots_dir / INPUTS_STAMP
    digest = inputs_digest(results_dir, leave_out=[plots_dir], settings={"plots_dir": str(plots_dir)})
    if up_to_date(stamp, digest):
        print(f"figures in {plots_dir}/ are up to date with {results_dir}/ and the code; nothing to draw")
        return

    # Step 3: each figure from its own files; a missing input skips just that figure.
    res = Results(results_dir)
    written = []
    for spec in FIGURES:
        fig, skipped = build_figure(spec, res)
        if skipped:
            print(skipped)
            continue
        save_figure(fig, plots_dir / spec.name)
        plt.close(fig)
        written += [plots_dir / f"{spec.name}.png", plots_dir / f"{spec.name}.pdf"]
        print(f"wrote {plots_dir / spec.name}.png and .pdf")
    mark_up_to_date(stamp, digest, written)
    print(f"{len(written) // 2} of {len(FIGURES)} figures written to {plots_dir}/")


if __name__ == "__main__":
    main()
