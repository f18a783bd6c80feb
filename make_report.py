"""Assemble the hand-in: results/report.pdf (set-up, paper summaries, tables, figures, analysis)
and results/code.zip (the tracked source), from the files in results/ alone.

    python make_report.py
    python make_report.py --results-dir /tmp/r --papers docs/papers.md

Also writes results/report.md, the same text and tables as the PDF in Markdown. Every number is
computed from the results when the report is made; a missing part is noted, not invented. A
results folder of `seed_<s>/` replicates (run_all.py --seeds) is reported as their mean (± sd),
after writing each task's `aggregate.csv`. When neither the results, the papers nor the code
changed since the report was made (results/.report_inputs.json), nothing is rewritten.
"""
from pathlib import Path

from utils.code_zip import write_code_zip
from utils.config import make_parser
from utils.errors import UserError, cli_main
from utils.freshness import REPORT_FILES, inputs_digest, mark_up_to_date, up_to_date
from utils.replicates import write_aggregates
from utils.report import write_report

REPO = Path(__file__).resolve().parent


def parse_args(argv):
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default="results", help="where the task scripts wrote CSV / JSON; "
                        "report.pdf, report.md and code.zip go there too")
    parser.add_argument("--papers", default=str(REPO / "docs" / "papers.md"),
                        help="Markdown file with the Task 1 paper summaries")
    parser.add_argument("--no-zip", action="store_true", help="write the report only, not code.zip")
    return parser.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    results_dir = Path(args.results_dir)
    if not results_dir.is_dir():
        raise UserError(f"no results folder {results_dir}; run python run_all.py (or the task scripts) "
                        "first, or pass --results-dir")

    # Step 1: several seeds (seed_<s>/ folders): each task's aggregate.csv (mean, std, n per column).
    for path in write_aggregates(results_dir):
        print(f"wrote {path}")

    # Step 2: nothing to do when neither the results, the papers nor the code changed since.
    # (the digest of what the report was made from: results/.report_inputs.json, utils/freshness.py)
    pdf_path, md_path, zip_path, stamp = (results_dir / name for name in REPORT_FILES)
    outputs = [pdf_path, md_path] + ([] if args.no_zip else [zip_path])
    digest = inputs_digest(results_dir, extra=[args.papers], settings={"papers": str(args.papers), "no_zip": args.no_zip})
    if up_to_date(stamp, digest):
        print(f"{', '.join(p.name for p in outputs)} in {results_dir}/ are up to date with its results, "
              "the papers and the code; nothing to write")
        return

    # Step 3: the report, rebuilt from results/ (PDF plus its Markdown twin).
    doc, pages, skipped = write_report(results_dir, args.papers, pdf_path, md_path)
    for line in skipped.values():
        print(line)
    print(f"wrote {pdf_path} ({pages} pages, {len(doc.tables)} tables) and {md_path}")

    # Step 4: the code, tracked source only.
    if not args.no_zip:
        names = write_code_zip(REPO, zip_path)
        print(f"wrote {zip_path} ({len(names)} files)")
    mark_up_to_date(stamp, digest, outputs)


if __name__ == "__main__":
    main()
