"""Report section of pruning at initialisation (prune_at_init.py): the accuracy table and the
answers (who beats random, the gap to pruning after training, whether shuffling and
re-initialising keep the accuracy and inverting lowers it), every number computed from
results/prune_at_init/ (and Tasks 2-3's summaries for the comparison) when the report is made.
"""
from utils.plots import pct
from utils.plots.prune_at_init import METHOD_NAMES, METHODS, RUN, dense_accuracy, select, summary_rows
from utils.analysis.common import acc, signed
from utils.document import Table

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


def _compare(rows, method, ablation):
    """[(sparsity, ablation − original)] where both were run."""
    base, other = _by_sparsity(rows, method, "original"), _by_sparsity(rows, method, ablation)
    return [(s, other[s] - base[s]) for s in sorted(base) if s in other]


def section(doc, res):
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
        for s in sorted(by_ablation["original"]):
            table_rows.append([METHOD_NAMES[m], pct(s)] + [acc(by_ablation[a].get(s)) for a in ABLATIONS]
                              + [f"{seconds[s]:.2f}"])
    doc.table(Table("prune_at_init", "Test accuracy (%) after training each subnetwork pruned at "
                    "initialisation, per ablation (n/a: not run; random runs original only)",
                    ["method", "sparsity", "original", "shuffle", "reinit", "invert", "scoring (s)"], table_rows))
    doc.figure("prune_at_init_ablations")
    doc.figure("prune_at_init_layer_density")

    doc.h2("Which methods beat random pruning?")
    random = _by_sparsity(rows, "random", "original")
    items = []
    for m in (m for m in methods if m != "random"):
        mine = _by_sparsity(rows, m, "original")
        diffs = [(s, mine[s] - random[s]) for s in sorted(mine) if s in random]
        if diffs:
            ahead = [s for s, d in diffs if d > 0]
            items.append(f"{METHOD_NAMES[m]}: ahead of random at {len(ahead)} of {len(diffs)} sparsities ("
                         + ", ".join(f"{pct(s)} {signed(d)}" for s, d in diffs)
                         + f"; mean {signed(sum(d for _, d in diffs) / len(diffs))} points).")
    if items:
        doc.bullets(items)
    else:
        doc.p("No random baseline to compare with: run python prune_at_init.py --methods random.")

    doc.h2("How far is pruning at initialisation from pruning after training?")
    after = {}
    for r in res.magnitude:
        after.setdefault(r["sparsity"], []).append(("magnitude after training (Task 2)", r["retrained_acc"]))
    for r in res.lottery:
        if r.get("method") == "oneshot":
            after.setdefault(r["sparsity"], []).append(("one-shot ticket (Task 3)", r["retrained_acc"]))
    if not after:
        doc.p("No pruning-after-training results (run python prune_magnitude.py and python lottery_imp.py) "
              "to compare with.")
    else:
        items = []
        for s in sorted(after):
            at_init = [(METHOD_NAMES[m], _by_sparsity(rows, m, "original").get(s)) for m in methods]
            at_init = [(n, a) for n, a in at_init if a is not None]
            if not at_init:
                continue
            best_name, best = max(at_init, key=lambda x: x[1])
            items.append(f"{pct(s)}: best at initialisation {best_name} {acc(best)}%; "
                         + "; ".join(f"{name} {acc(a)}% ({signed(best - a)} points)" for name, a in after[s]) + ".")
        if items:
            doc.bullets(items)
            doc.p("A negative number is the gap pruning at initialisation leaves to pruning after training. "
                  "Tasks 2-3 use their own runs (their network and recipe: see their sections).")
        else:
            doc.p("Tasks 2-3 were run at " + ", ".join(pct(s) for s in sorted(after)) + " sparsity, none of which "
                  "this run has; pass one of them in --sparsities to compare.")

    doc.h2("Do shuffling and re-initialising keep the accuracy, and does inverting lower it?")
    items = []
    for m in (m for m in methods if m != "random"):
        parts = []
        for ablation, verb in (("shuffle", "keeps"), ("reinit", "keeps"), ("invert", "lowers")):
            diffs = _compare(rows, m, ablation)
            if not diffs:
                continue
            mean = sum(d for _, d in diffs) / len(diffs)
            if verb == "keeps":
                ok = all(d >= -POINTS for _, d in diffs)
                word = "keeps" if ok else "does not keep"
            else:
                ok = all(d < -POINTS for _, d in diffs)
                word = "lowers" if ok else "does not always lower"
            parts.append(f"{ablation} {word} it (mean {signed(mean)} points vs original)")
        if parts:
            items.append(f"{METHOD_NAMES[m]}: " + "; ".join(parts) + ".")
    doc.bullets(items)
    doc.p(f"Keeps: never more than {POINTS:g} point below the original at any sparsity; lowers: more than "
          f"{POINTS:g} point below at every sparsity. If shuffling keeps the accuracy, the method's per-layer "
          "sparsities, not its choice of individual weights, carry its result; if re-initialising keeps it, "
          "the initial values it pruned from do not matter; if inverting does not lower it, the score does "
          "not rank the weights by importance. Frankle et al. 2021 find that shuffling and re-initialising "
          "do not hurt any method and that inverting hurts SNIP, SynFlow and magnitude but not GraSP; the "
          "reproduction report found inverted SynFlow as accurate as the original.")
