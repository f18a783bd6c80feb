"""The report, end to end: results/ -> the analysis (utils/analysis) -> a `Doc` -> report.pdf
and its Markdown twin report.md (utils/document), written atomically.

Every number in the report is computed by the analysis from the CSV/JSON files; none is typed in.
"""
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from utils.analysis import build_doc  # noqa: E402
from utils.analysis.setup import title  # noqa: E402
from utils.document import render_pdf, to_markdown  # noqa: E402
from utils.document import FIGURE_DPI  # noqa: E402
from utils.io import _atomic_write, save_text  # noqa: E402
from utils.plots import FIGURES, Results, build_figure  # noqa: E402


def figure_png(res):
    """name -> (PNG bytes, None), or (None, the skip line naming the command that makes its input)."""
    specs = {s.name: s for s in FIGURES}

    def make(name):
        fig, skip = build_figure(specs[name], res)
        if skip:
            return None, skip
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue(), None
    return make


def write_report(results_dir, papers_path, pdf_path, md_path):
    """Build the report from `results_dir`; write the PDF and its Markdown twin atomically.
    Returns (doc, pages, {figure: skip line})."""
    res = Results(Path(results_dir))
    doc = build_doc(res, papers_path)
    box = {}

    def render(f):
        box["pages"], box["skipped"] = render_pdf(doc, f, figure_png(res), title(res))
    _atomic_write(pdf_path, render)
    save_text(to_markdown(doc, box["skipped"]), md_path)
    return doc, box["pages"], box["skipped"]
