"""Report section of pruning at initialisation (prune_at_init.py): the accuracy table and the
answers (who beats random, the gap to pruning after training, whether shuffling and
re-initialising keep the accuracy and inverting lowers it), every number computed from
results/prune_at_init/ (and Tasks 2-3's summaries for the comparison) when the report is made.
Every comparison pairs the numbers by seed and follows the report's noise rule (utils/noise.py).
A comparison involving a collapsed mask (a layer left empty) is never called better or worse: it
reads "layer collapse (classifier empty): not a test of the score" (utils.pruning.collapse_note).
"""
import statistics

from utils.plots import pct
from utils.plots.prune_at_init import METHOD_NAMES, METHODS, RUN, dense_accuracy, select, summary_rows
from utils.analysis.common import (NOT_TESTABLE, Claim, acc, acc_sd, combined, compare, listing, not_run, same,
                                   seed_values, seeds_caption, threshold, verdict_of, verdict_table)
from utils.document import Table
from utils.plots.common import collapse_note

# An ablation "keeps" the accuracy when it ends no more than this many points below the original;
# inversion "lowers" it when it ends more than this many points below (the report's MATCH_POINTS).
POINTS = 1.0
ABLATIONS = ("original", "shuffle", "reinit", "invert")


def _by_sparsity(rows, method, ablation):
    return {r["sparsity"]: r["final_acc"] for r in select(rows, method, ablation)}


def _first_config(res, rows):
    for r in rows:
        summary = res.json(RUN, r["method"], r["ablation"], f"sparsity_{100 * r['sparsity']:g}", "summary.json")
        if summary:
            return summary.get("config", {})
    return {}


def _seed_values(res, method, ablation, sparsity):
    """Per-seed final accuracy of (method, ablation) at `sparsity` (None where a seed lacks it)."""
    def one(rep):
        hit = [r for r in select(summary_rows(rep), method, ablation) if same(r["sparsity"], sparsity)]
        return hit[0]["final_acc"] if hit else None
    return res.per_seed(one)


def _seed_means(res, method, ablation, sparsities):
    """Per seed, the mean final accuracy of (method, ablation) over `sparsities` (None if one is missing)."""
    def one(rep):
        found = _by_sparsity(summary_rows(rep), method, ablation)
        return statistics.fmean(found[s] for s in sparsities) if sparsities and all(s in found for s in sparsities) \
            else None
    return res.per_seed(one)


def _against_original(res, rows, method, ablation):
    """(the sparsities both ran where neither mask collapsed, per sparsity `threshold` of ablation
    vs original against POINTS, `compare` of their per-seed means over those sparsities,
    [(sparsity, collapse note)] of the sparsities left out) for `method`."""
    common, skipped = _tested(rows, method, ablation, method, "original",
                              _common(rows, method, method, ablation=ablation))
    per = [threshold(_seed_values(res, method, ablation, x), _seed_values(res, method, "original", x), POINTS)
           for x in common]
    mean = compare(_seed_means(res, method, ablation, common), _seed_means(res, method, "original", common))
    return common, per, mean, skipped


def _common(rows, method, other_method, ablation="original", other_ablation="original"):
    """The sparsities both (method, ablation) and (other_method, other_ablation) were run at."""
    a, b = _by_sparsity(rows, method, ablation), _by_sparsity(rows, other_method, other_ablation)
    return [s for s in sorted(a) if s in b]


def _row(rows, method, ablation, sparsity):
    return next((r for r in select(rows, method, ablation) if same(r["sparsity"], sparsity)), None)


def _collapse(rows, *runs):
    """The collapse note of the first of `runs` ((method, ablation, sparsity)) whose mask left a
    layer empty, '' when none did."""
    for run in runs:
        row = _row(rows, *run)
        note = collapse_note(row) if row else ""
        if note:
            return note
    return ""


def _mask_cell(row):
    """chosen_by_score and the empty layers of one mask, e.g. '0.074, classifier + 20 empty'."""
    if row is None:
        return "n/a"
    chosen = row.get("chosen_by_score")
    share = f"{chosen:.3f}" if isinstance(chosen, float) else "-"
    empty = row.get("collapsed_layers")
    if not empty:
        return share
    n = len(str(empty).split(";"))
    what = (f"classifier + {n - 1}" if n > 1 else "classifier") if row.get("classifier_collapsed") in (True, "True") \
        else f"{n}"
    return f"{share}, {what} empty"


def _tested(rows, method, ablation, other_method, other_ablation, sparsities):
    """(the sparsities where neither mask collapsed, [(sparsity, note)] for the others)."""
    ok, skipped = [], []
    for x in sparsities:
        note = _collapse(rows, (method, ablation, x), (other_method, other_ablation, x))
        (skipped.append((x, note)) if note else ok.append(x))
    return ok, skipped


def _skipped_text(skipped):
    return "; ".join(f"{pct(x)}: {note}" for x, note in skipped)


def section(doc, res):
    _results(doc, res)
    verdict_table(doc, "prune_at_init", claims(res))


def _results(doc, res):
    rows = summary_rows(res)
    doc.h1("Pruning at initialisation and its sanity checks (Frankle et al. 2021)")
    if not rows:
        doc.p(f"No results yet (results/{RUN}/summary.csv): run python prune_at_init.py.")
        return
    cfg = _first_config(res, rows)
    methods = [m for m in METHODS if any(r.get("method") == m for r in rows)]
    dense = dense_accuracy(rows)
    doc.p(f"The untrained {cfg.get('arch', 'network')} ({cfg.get('init', 'its initialisation')}) is pruned by "
          f"each score, and every subnetwork is trained for {cfg.get('epochs', '?')} epoch(s) (lr {cfg.get('lr', '?')}, "
          f"milestones {cfg.get('milestones', '?')}) with its mask fixed. Ablations: shuffle each layer's mask, "
          "re-initialise the kept weights, invert the scores (prune the other end)."
          + (f" The dense network trained the same way reaches {acc(dense)}%." if dense is not None else ""))

    table_rows = []
    for m in methods:
        by_ablation = {a: _by_sparsity(rows, m, a) for a in ABLATIONS}
        seconds = {r["sparsity"]: r["score_seconds"] for r in select(rows, m, "original")}
        cells = {a: {r["sparsity"]: r for r in select(rows, m, a)} for a in ABLATIONS}
        for s in sorted(by_ablation["original"]):
            table_rows.append([METHOD_NAMES[m], pct(s)] + [acc_sd(cells[a].get(s), "final_acc") for a in ABLATIONS]
                              + [f"{seconds[s]:.2f}"])
    doc.table(Table("prune_at_init", "Test accuracy (%) after training each subnetwork pruned at "
                    "initialisation, per ablation (n/a: not run; random runs original only)" + seeds_caption(res),
                    ["method", "sparsity", "original", "shuffle", "reinit", "invert", "scoring (s)"], table_rows))
    mask_rows = []
    for m in methods:
        for s in sorted({r["sparsity"] for r in select(rows, m, "original")}):
            mask_rows.append([METHOD_NAMES[m], pct(s)] + [_mask_cell(_row(rows, m, a, s)) for a in ABLATIONS])
    doc.table(Table("prune_at_init_masks", "The masks: chosen_by_score (the share of removed weights whose "
                    "score was strictly beyond the cut; the rest were tied at it and removed by position) "
                    "and the layers each mask leaves empty (layer collapse); shuffle and reinit keep the "
                    "original's per-layer counts" + seeds_caption(res),
                    ["method", "sparsity", "original", "shuffle", "reinit", "invert"], mask_rows))
    collapsed = [f"{METHOD_NAMES[r['method']]} {r['ablation']} {pct(r['sparsity'])}" for r in rows
                 if r.get("method") in methods and collapse_note(r)]
    if collapsed:
        doc.p("Layer collapse: " + ", ".join(collapsed) + " leave a layer empty. A network with an empty "
              "classifier outputs a constant whatever the other weights, so these runs are not a test of "
              "their score, and no comparison below calls them better or worse.")
    doc.figure("prune_at_init_ablations")
    doc.figure("prune_at_init_layer_density")

    doc.h2("Which methods beat random pruning?")
    items = []
    for m in (m for m in methods if m != "random"):
        common, skipped = _tested(rows, m, "original", "random", "original", _common(rows, m, "random"))
        if common:
            per = [(pct(x), compare(_seed_values(res, m, "original", x), _seed_values(res, "random", "original", x)))
                   for x in common]
            mean = compare(_seed_means(res, m, "original", common), _seed_means(res, "random", "original", common))
            items.append(f"{METHOD_NAMES[m]} vs random: {listing(per, 'ahead', 'behind')}; averaged over these "
                         f"sparsities: {mean.says('ahead', 'behind')}."
                         + (f" Not compared: {_skipped_text(skipped)}." if skipped else ""))
        elif skipped:
            items.append(f"{METHOD_NAMES[m]} vs random: {_skipped_text(skipped)}.")
    if items:
        doc.bullets(items)
    else:
        doc.p("No random baseline to compare with: run python prune_at_init.py --methods random.")

    doc.h2("How far is pruning at initialisation from pruning after training?")
    after = {}  # sparsity -> [(name, mean accuracy, per-seed accuracies)]
    for r in res.magnitude:
        seeds = seed_values(res, lambda rep: rep.magnitude, "retrained_acc", sparsity=r["sparsity"])
        after.setdefault(r["sparsity"], []).append(("magnitude after training (Task 2)", r["retrained_acc"], seeds))
    for r in res.lottery:
        if r.get("method") == "oneshot":
            seeds = seed_values(res, lambda rep: rep.lottery, "retrained_acc", method="oneshot", sparsity=r["sparsity"])
            after.setdefault(r["sparsity"], []).append(("one-shot ticket (Task 3)", r["retrained_acc"], seeds))
    if not after:
        doc.p("No pruning-after-training results (run python prune_magnitude.py and python lottery_imp.py) "
              "to compare with.")
    else:
        items = []
        for s in sorted(after):
            at_init = [(m, _by_sparsity(rows, m, "original").get(s)) for m in methods]
            at_init = [(m, a) for m, a in at_init if a is not None]
            if not at_init:
                continue
            best_method, best = max(at_init, key=lambda x: x[1])  # the best mean, compared per seed
            best_seeds = _seed_values(res, best_method, "original", s)
            items.append(f"{pct(s)}: best at initialisation {METHOD_NAMES[best_method]} {acc(best)}%; "
                         + "; ".join(f"against {name} {acc(a)}%: {compare(best_seeds, seeds).says()}"
                                     for name, a, seeds in after[s]) + ".")
        if items:
            doc.bullets(items)
            doc.p("A negative Δ is the gap pruning at initialisation leaves to pruning after training. "
                  "Tasks 2-3 use their own runs (their network and recipe: see their sections).")
        else:
            doc.p("Tasks 2-3 were run at " + ", ".join(pct(s) for s in sorted(after)) + " sparsity, none of which "
                  "this run has; pass one of them in --sparsities to compare.")

    doc.h2("Do shuffling and re-initialising keep the accuracy, and does inverting lower it?")
    items = []
    for m in (m for m in methods if m != "random"):
        parts = []
        for ablation, verb in (("shuffle", "keeps"), ("reinit", "keeps"), ("invert", "lowers")):
            common, per, mean, skipped = _against_original(res, rows, m, ablation)
            if skipped:
                parts.append(f"{ablation}: {_skipped_text(skipped)}")
            if not common:
                continue
            if not res.multi_seed:
                word = "changes"  # one seed: the difference only, no verdict
            elif verb == "keeps":
                word = "keeps" if all(c.up for c in per) else "does not keep" if any(c.down for c in per) else \
                    "is within noise of keeping"
            else:
                word = "lowers" if all(c.down for c in per) else "does not always lower" if any(c.up for c in per) \
                    else "is within noise of lowering"
            parts.append(f"{ablation} {word} it (mean vs original: {mean.says()})")
        if parts:
            items.append(f"{METHOD_NAMES[m]}: " + "; ".join(parts) + ".")
    doc.bullets(items)
    doc.p(f"Keeps: called within {POINTS:g} point of the original at every sparsity; lowers: called more than "
          f"{POINTS:g} point below at every sparsity (the noise rule against a {POINTS:g}-point margin; with one "
          "seed neither is called). If shuffling keeps the accuracy, the method's per-layer "
          "sparsities, not its choice of individual weights, carry its result; if re-initialising keeps it, "
          "the initial values it pruned from do not matter; if inverting does not lower it, the score does "
          "not rank the weights by importance. Frankle et al. 2021 find that shuffling and re-initialising "
          "do not hurt any method and that inverting hurts SNIP, SynFlow and magnitude but not GraSP. The "
          "reproduction report (Vijayakumar et al., section 5, SynFlow) found inverted SynFlow as accurate "
          "as the original; that is not a result to agree with when the inverted masks collapse: pruning "
          "the highest-flow weights first empties the classifier within a few rounds, after which every "
          "score is 0 and the remaining removals are ties broken by position (see the mask table)."
          + (f" Here inverted SynFlow {_inverted_synflow(rows)}." if _inverted_synflow(rows) else ""))


def _inverted_synflow(rows):
    """What this run's inverted SynFlow masks are: collapsed at which sparsities, with their
    chosen_by_score; '' when there are none."""
    inverted = select(rows, "synflow", "invert")
    if not inverted:
        return ""
    hit = [r for r in inverted if collapse_note(r)]
    if not hit:
        return "leaves no layer empty at " + ", ".join(pct(r["sparsity"]) for r in inverted)
    return "collapses at " + ", ".join(f"{pct(r['sparsity'])} (chosen_by_score {_mask_cell(r)})" for r in hit)


REPRO = "Frankle et al. 2021; the reproduction report"
INVERT_HURTS = {"snip": True, "grasp": False, "synflow": True, "magnitude": True}  # Frankle et al. 2021


def _n(sparsities):
    return f"{len(sparsities)} sparsit{'y' if len(sparsities) == 1 else 'ies'}"


def claims(res):
    """Frankle et al. 2021's claims as the reproduction report states them: every score beats
    random pruning; shuffling and re-initialising keep the accuracy (within POINTS); inverting
    lowers it by more than POINTS for SNIP, SynFlow and magnitude, not for GraSP; pruning at
    initialisation falls short of pruning after training. A comparison with a collapsed mask is
    not a test of the score: not testable."""
    rows = summary_rows(res)
    beats = "Each score (SNIP, GraSP, SynFlow, magnitude) beats random pruning at the same sparsity"
    keeps = {"shuffle": f"Shuffling each layer's mask keeps the accuracy (within {POINTS:g} point here)",
             "reinit": f"Re-initialising the kept weights keeps the accuracy (within {POINTS:g} point here)"}
    short = "Pruning at initialisation falls short of pruning after training at the same sparsity"
    if not rows:
        return [not_run(c, s, "python prune_at_init.py") for c, s in
                ((beats, f"{REPRO}, Section 2.5"), (keeps["shuffle"], f"{REPRO}, Section 5"),
                 (keeps["reinit"], f"{REPRO}, Section 5"), (short, f"{REPRO}, Section 2.5"))]
    methods = [m for m in METHODS if m != "random" and any(r.get("method") == m for r in rows)]
    out = []
    parts, verdicts = [], []
    for m in methods:
        common = _common(rows, m, "random")
        if common:
            c = compare(_seed_means(res, m, "original", common), _seed_means(res, "random", "original", common))
            parts.append(f"{METHOD_NAMES[m]} vs random, mean over {_n(common)}: {c.says('ahead', 'behind')}")
            verdicts.append(verdict_of(c))
    out.append(Claim(beats, f"{REPRO}, Section 2.5", "; ".join(parts), combined(verdicts)) if parts else
               not_run(beats, f"{REPRO}, Section 2.5", "python prune_at_init.py --methods random"))
    for ablation in ("shuffle", "reinit"):
        parts, verdicts = [], []
        for m in methods:
            common, per, mean, _ = _against_original(res, rows, m, ablation)
            if not common:
                continue
            parts.append(f"{METHOD_NAMES[m]}: {mean.says()} (mean over {_n(common)})")
            verdicts.append(combined(verdict_of(c) for c in per))
        out.append(Claim(keeps[ablation], f"{REPRO}, Section 5", "; ".join(parts), combined(verdicts)) if parts else
                   not_run(keeps[ablation], f"{REPRO}, Section 5", f"python prune_at_init.py --ablations {ablation}"))
    for m in methods:
        common, per, mean, skipped = _against_original(res, rows, m, "invert")
        if not common and not skipped:
            continue
        hurts = INVERT_HURTS.get(m, True)
        claim = (f"Inverting {METHOD_NAMES[m]}'s scores " + ("lowers the accuracy (by more than " if hurts else
                 "does not lower the accuracy (within ") + f"{POINTS:g} point here)")
        left_out = f"not a test of the score at {_skipped_text(skipped)}" if skipped else ""
        if not common:
            out.append(Claim(claim, f"{REPRO}, Sections 2.2 and 5", left_out, NOT_TESTABLE))
            continue
        out.append(Claim(claim, f"{REPRO}, Sections 2.2 and 5",
                         f"inverted vs original, mean over {_n(common)}: {mean.says()}"
                         + (f"; {left_out}" if left_out else ""),
                         combined(verdict_of(c, "down" if hurts else "up") for c in per)))
    parts, verdicts = [], []
    for r in res.magnitude:
        s = r["sparsity"]
        at_init = [m for m in methods if s in _by_sparsity(rows, m, "original")]
        if not s or not at_init:
            continue
        best = max(at_init, key=lambda m: _by_sparsity(rows, m, "original")[s])
        c = compare(_seed_values(res, best, "original", s),
                    seed_values(res, lambda rep: rep.magnitude, "retrained_acc", sparsity=s))
        parts.append(f"{100 * s:g}%: {METHOD_NAMES[best]} vs magnitude after training (Task 2): {c.says()}")
        verdicts.append(verdict_of(c, "down"))
    out.append(Claim(short, f"{REPRO}, Section 2.5", "; ".join(parts), combined(verdicts)) if parts else
               not_run(short, f"{REPRO}, Section 2.5", "python prune_magnitude.py at the same --sparsities"))
    return out
