"""What every report section shares: number formatting, the "matches the original" margin and
the architecture's name as the text says it."""
from utils.plots.common import arch_label, pct  # noqa: F401  (re-exported for the sections)

# How far below the dense accuracy still counts as "matching" it (a ticket, a retrained net).
MATCH_POINTS = 1.0


def acc(v):
    return "n/a" if v is None else f"{v:.2f}"


def signed(v):
    return "n/a" if v is None else f"{v:+.2f}"


def hms(seconds):
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def missing(doc, path, command):
    """The line a section writes instead of numbers when its input file is missing."""
    doc.p(f"No results yet ({path}): run {command}.")
