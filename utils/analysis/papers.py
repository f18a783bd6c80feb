"""Task 1: the paper summaries, read from a Markdown file (docs/papers.md) into the report."""
import re
from pathlib import Path

from utils.analysis import early_bird, lottery, magnitude, robustness
from utils.analysis.common import verdict_table


def plain(text):
    """Markdown inline markup -> plain text (links keep their words)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"(\*\*|__|\*|`)", "", text)
    return text


def section(doc, res):
    """The summaries, then the verdict on the summarised papers' claims that the tasks test."""
    _summaries(doc, res)
    verdict_table(doc, "papers", claims(res))


def claims(res):
    """The claims of the summarised papers that Tasks 2-4 and the bonus test, with the verdicts
    their sections give (Lottery Ticket, Early-Bird, Han et al., Li et al.)."""
    return lottery.claims(res) + early_bird.claims(res) + magnitude.claims(res) + robustness.claims(res)[1:]


def _summaries(doc, res):
    """`res.papers_path` (set by utils.analysis.build_doc) names the Markdown file."""
    papers_path = Path(res.papers_path)
    if not papers_path.is_file():
        doc.h1("Task 1: paper summaries")
        doc.p(f"The paper summaries are missing: {papers_path} was not found.")
        return
    para, bullets = [], []

    def flush():
        if para:
            doc.p(plain(" ".join(para)))
            para.clear()
        if bullets:
            doc.bullets([plain(b) for b in bullets])
            bullets.clear()

    for line in papers_path.read_text().splitlines():
        s = line.strip()
        m = re.match(r"^(#{1,6})\s+(.*)", s)
        if m:
            flush()
            (doc.h1, doc.h2, doc.h3)[min(len(m.group(1)), 3) - 1](plain(m.group(2)))
        elif re.match(r"^([-*+]|\d+\.)\s+", s):
            if para:
                flush()
            bullets.append(re.sub(r"^([-*+]|\d+\.)\s+", "", s))
        elif not s:
            flush()
        elif bullets and line.startswith((" ", "\t")):
            bullets[-1] += " " + s  # a wrapped bullet continues
        else:
            if bullets:
                flush()
            para.append(s)
    flush()
