"""What every report section shares: number formatting, the "matches the original" margin, the
architecture's name as the text says it, and the per-seed values a comparison needs.

Every sentence that compares two numbers pairs them by seed and lets utils/noise.py decide
(`compare`, `threshold`, `listing`): the values come from `res.per_seed(...)`, never from the
difference of two means alone. Tables show means (with ± sd over seeds: `acc_sd`).
"""
from dataclasses import dataclass

from utils.document import Table
from utils.noise import compare, listing, threshold  # noqa: F401  (re-exported for the sections)
from utils.plots.common import arch_label, pct  # noqa: F401  (re-exported for the sections)
from utils.plots.common import collapse_note
from utils.replicates import sd_of

# How far below the dense accuracy still counts as "matching" it (a ticket, a retrained net).
MATCH_POINTS = 1.0


def acc(v):
    return "n/a" if v is None else f"{v:.2f}"


def acc_sd(row, column):
    """An accuracy cell: '91.00 ± 0.30' when `row` averages several seeds, else '91.00'."""
    v = None if row is None else row.get(column)
    sd = None if row is None else sd_of(row, column)
    return acc(v) if sd is None or v is None else f"{v:.2f} ± {sd:.2f}"


def seeds_caption(res):
    """What a table caption adds with several seeds: '; mean ± sd over n = 2 seeds (0, 1)'."""
    return f"; mean ± sd over n = {len(res.seeds)} seeds ({', '.join(map(str, res.seeds))})" if res.multi_seed else ""


def same(a, b):
    """Key cells equal: numbers within 1e-9 (sparsities read back from CSV), anything else ==."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) < 1e-9
    return a == b


def find(rows, **key):
    """The first row whose columns equal `key` (see `same`), else None."""
    return next((r for r in rows if all(same(r.get(k), v) for k, v in key.items())), None)


def seed_values(res, rows_of, column, **key):
    """Per-seed values of `column` in the row matching `key` of `rows_of(replicate)` (None where a
    seed lacks it): the paired values `compare` takes. `rows_of` is e.g. `lambda r: r.magnitude`."""
    def one(rep):
        row = find(rows_of(rep), **key)
        return None if row is None else row.get(column)
    return res.per_seed(one)


def signed(v):
    return "n/a" if v is None else f"{v:+.2f}"


def hms(seconds):
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def missing(doc, path, command):
    """The line a section writes instead of numbers when its input file is missing."""
    doc.p(f"No results yet ({path}): run {command}.")


# ---- The verdict against the paper (issue 22) -----------------------------------------------
# Every task section ends with `verdict_table(doc, task, claims)`: one row per claim of the paper
# (or reference text) the section reproduces. A claim names where a reader finds it (section,
# table or figure); where the paper prints no number the claim is said qualitatively. The verdict
# is decided by the report's noise rule (`verdict_of`), never typed in.

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
WITHIN_NOISE = "within noise"
NOT_TESTABLE = "not testable at this scale"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, WITHIN_NOISE, NOT_TESTABLE)


@dataclass(frozen=True)
class Claim:
    """One row of a verdict table.

    claim: the paper's claim in one line (its number where it prints one, else qualitative);
    source: where a reader finds it ("Frankle & Carbin 2019, Section 2, Figure 3");
    measured: what this run measured (numbers with their Δ, or why nothing was measured);
    verdict: one of VERDICTS, normally from `verdict_of` (or `combined`)."""

    claim: str
    source: str
    measured: str
    verdict: str

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} is not one of {VERDICTS}")


def verdict_of(c, expect="up"):
    """The verdict on a claim that predicts the `Comparison` `c` (from `compare` or `threshold`)
    is called `expect` ('up': above what it is tested against; 'down': below). Called that way:
    reproduced; called the other way: not reproduced; two or more seeds but not called: within
    noise; one seed, no seed with both values, or no comparison (None): not testable at this
    scale (one seed gives no estimate of its own noise, utils/noise.py)."""
    if expect not in ("up", "down"):
        raise ValueError(f"expect is 'up' or 'down', got {expect!r}")
    if c is None or c.n < 2:
        return NOT_TESTABLE
    if not c.called:
        return WITHIN_NOISE
    return REPRODUCED if (c.up if expect == "up" else c.down) else NOT_REPRODUCED


def combined(verdicts):
    """One verdict for a claim made at several points (every sparsity, both sides): not
    reproduced if any point is; reproduced if every point is; not testable if every point is;
    otherwise within noise."""
    verdicts = list(verdicts)
    if not verdicts or all(v == NOT_TESTABLE for v in verdicts):
        return NOT_TESTABLE
    if NOT_REPRODUCED in verdicts:
        return NOT_REPRODUCED
    if all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    return WITHIN_NOISE


def within_says(c, margin=MATCH_POINTS):
    """A `threshold` comparison in words: 'within 1 point (Δ = ...)', 'more than 1 point below
    (Δ = ...)', or the rule's 'within noise' / one-seed difference."""
    return c.says(f"within {margin:g} point", f"more than {margin:g} point below", f"within noise of the "
                  f"{margin:g}-point margin")


def not_run(claim, source, command):
    """The row of a claim whose input this results folder lacks."""
    return Claim(claim, source, f"not run ({command})", NOT_TESTABLE)


def verdict_table(doc, task, claims):
    """Append the section's closing table: claim (source), measured here, verdict. `task` names
    the table ('verdict_<task>'); `claims` is a list of `Claim`."""
    doc.h2("Verdict against the paper")
    doc.table(Table(f"verdict_{task}", "Each claim of the paper or reference text this section reproduces, what "
                    "this run measured, and the verdict the report's noise rule gives (one seed, or a claim this "
                    "run does not reach, is not testable at this scale)",
                    ["claim", "source", "measured here", "verdict"],
                    [[c.claim, c.source, c.measured, c.verdict] for c in claims]))


def masks_paragraph(doc, rows, label):
    """The line on the masks behind `rows` (summary.csv rows with `collapsed_layers` and
    `chosen_by_score`; `label(row)` names one): the lowest share of removals a score decided,
    and every mask that leaves a layer empty, which no sentence may call better or worse."""
    shares = [r["chosen_by_score"] for r in rows if isinstance(r.get("chosen_by_score"), float)]
    collapsed = [r for r in rows if collapse_note(r)]
    if not shares and not collapsed:
        return
    text = (f"Masks: chosen_by_score (the share of removed weights the score decided, not a tie at "
            f"the cut) is {min(shares):.3f} at the lowest over {len(shares)} mask(s); " if shares else "Masks: ")
    if collapsed:
        text += ("layer collapse in " + "; ".join(f"{label(r)}: {collapse_note(r)}" for r in collapsed)
                 + ". Their accuracies are listed but are not a comparison of the score.")
    else:
        text += "no mask leaves a layer empty."
    doc.p(text)
