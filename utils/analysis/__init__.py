"""The report's analysis: numbers from results/ turned into sentences and tables of a `Doc`.

Each module exports `section(doc, res)`, which appends its part (headings, tables, figures by
name, bullets) computed from `res` (a `utils.plots.Results`) and notes a missing input with the
command that makes it. `SECTIONS` is the report's order; each section starts on a new page. A new
task adds `utils/analysis/<task>.py` and one line below, and never touches the typesetting
(utils/document.py).
"""
from dataclasses import dataclass
from pathlib import Path

from utils.analysis import earlycrop  # noqa: E402
from utils.analysis import prune_at_init  # noqa: E402
from utils.analysis import three_regime  # noqa: E402
from utils.analysis import ticket_transfer  # noqa: E402
from utils.analysis import leaderboard  # noqa: E402
from utils.analysis import deploy  # noqa: E402
from utils.analysis import early_bird, lottery, magnitude, papers, robustness, setup
from utils.document import Doc
from utils.plots.common import Results

SECTIONS = [
    setup.section,
    papers.section,
    magnitude.section,
    lottery.section,
    early_bird.section,
    robustness.section,
    prune_at_init.section,
    earlycrop.section,
    three_regime.section,
    ticket_transfer.section,
    leaderboard.section,  # it ranks the methods every earlier section introduces
    deploy.section,  # last: the leaderboard's networks, deployed and measured
]


@dataclass
class ReportResults(Results):
    """The results folder plus the one input that is not in it: the Task 1 summaries file."""

    papers_path: Path = None


def build_doc(res, papers_path):
    """The whole report as a `Doc`: every section of `SECTIONS`, in order, each on a new page."""
    res = ReportResults(Path(res.root), Path(papers_path))
    doc = Doc()
    for i, section in enumerate(SECTIONS):
        if i:
            doc.page_break()
        section(doc, res)
    return doc
