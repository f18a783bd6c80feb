"""What every report section shares: number formatting, the "matches the original" margin, the
architecture's name as the text says it, and the per-seed values a comparison needs.

Every sentence that compares two numbers pairs them by seed and lets utils/noise.py decide
(`compare`, `threshold`, `listing`): the values come from `res.per_seed(...)`, never from the
difference of two means alone. Tables show means (with ± sd over seeds: `acc_sd`).
"""
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
