"""Task 3: is there a lottery-ticket effect (tickets against the original and the controls),
and how do Task 2's fine-tuned networks compare with Task 3's rewound tickets? Every comparison
pairs the numbers by seed and follows the report's noise rule (utils/noise.py)."""
from utils.analysis.common import (MATCH_POINTS, Claim, acc, acc_sd, compare, listing, masks_paragraph,
                                   missing, not_run, pct, same, seed_values, seeds_caption, threshold,
                                   verdict_of, verdict_table, within_says)
from utils.document import Table

METHOD_ORDER = ["oneshot", "imp", "reinit", "random"]
METHOD_NAMES = {"oneshot": "one-shot ticket", "imp": "IMP ticket", "reinit": "re-initialised (control)",
                "random": "random mask (control)"}
TICKETS, CONTROLS = ("oneshot", "imp"), ("reinit", "random")


def _method_rows(rows, method):
    return sorted((r for r in rows if r.get("method") == method), key=lambda r: (r["sparsity"], r.get("round") or 0))


def _row_at(rows, method, sparsity):
    """The row of `method` at `sparsity` (the last round landing there), or None."""
    hits = [r for r in _method_rows(rows, method) if same(r["sparsity"], sparsity)]
    return hits[-1] if hits else None


def _at(rows, method, sparsity):
    """The retrained accuracy of `method` at `sparsity` (the last round landing there), or None."""
    hit = _row_at(rows, method, sparsity)
    return hit["retrained_acc"] if hit else None


def _best(rows, methods, sparsity):
    """The highest retrained accuracy among `methods` at `sparsity` in one seed's rows, or None."""
    found = [a for a in (_at(rows, m, sparsity) for m in methods) if a is not None]
    return max(found) if found else None


def section(doc, res):
    _results(doc, res)
    verdict_table(doc, "lottery", claims(res))


def _results(doc, res):
    rows = res.lottery
    doc.h1("Task 3: lottery tickets (one-shot and iterative magnitude pruning)")
    if not rows:
        missing(doc, "results/lottery/summary.csv", "python lottery_imp.py")
        doc.figure("accuracy_vs_sparsity")
        return
    methods = [m for m in METHOD_ORDER if any(r.get("method") == m for r in rows)]
    methods += sorted({r.get("method") for r in rows} - set(methods))
    table_rows = []
    for m in methods:
        for r in _method_rows(rows, m):
            rnd = r.get("round")
            table_rows.append([METHOD_NAMES.get(m, m), pct(r["sparsity"]), "" if rnd is None else f"{int(rnd)}",
                               acc_sd(r, "dense_acc"), acc_sd(r, "ticket_acc"), acc_sd(r, "retrained_acc")])
    doc.table(Table("lottery", "Task 3: test accuracy (%) of the original network, of the ticket (mask on the "
                    "rewound weights, before training) and of the trained ticket" + seeds_caption(res),
                    ["method", "sparsity", "round", "original", "ticket (untrained)", "retrained"], table_rows))
    masks_paragraph(doc, rows, lambda r: f"{METHOD_NAMES.get(r['method'], r['method'])} {pct(r['sparsity'])}")
    for m in methods:
        doc.figure(f"lottery_{m}_trajectories" if m in ("oneshot", "imp") else f"lottery_control_{m}_trajectories")

    doc.h2("Is there a lottery-ticket effect?")
    dense_acc = rows[0].get("dense_acc")
    targets = sorted({r["sparsity"] for r in rows if r.get("method") == "oneshot"}) or \
        sorted({r["sparsity"] for r in rows})
    dense = res.per_seed(lambda rep: (rep.lottery or [{}])[0].get("dense_acc"))

    def method_values(m, s):
        return res.per_seed(lambda rep: _at(rep.lottery, m, s))

    def best_values(methods, s):  # per seed, the better of `methods` there
        return res.per_seed(lambda rep: _best(rep.lottery, methods, s))

    items = []
    for s in targets:
        parts = []
        for m in TICKETS:
            a = _at(rows, m, s)
            if a is not None:
                parts.append(f"{METHOD_NAMES[m]} {acc(a)}% (vs original: {compare(method_values(m, s), dense).says()})")
        for m in CONTROLS:
            a = _at(rows, m, s)
            if a is not None:
                ahead = compare(best_values(TICKETS, s), method_values(m, s))
                parts.append(f"{METHOD_NAMES[m]} {acc(a)}%" + (f" (best ticket vs it: {ahead.says('ahead', 'behind')})"
                                                             if ahead.n else ""))
        if parts:
            items.append(f"{pct(s)} sparsity: " + "; ".join(parts) + ".")
    doc.bullets(items)
    matched = [(pct(s), threshold(best_values(TICKETS, s), dense, MATCH_POINTS)) for s in targets]
    doc.p(f"The better ticket trained from the rewound weights (one-shot or IMP, per seed) against the original "
          f"({acc(dense_acc)}%): " + listing(matched, f"within {MATCH_POINTS:g} point", f"more than {MATCH_POINTS:g} "
                                              f"point below", f"within noise of the {MATCH_POINTS:g}-point margin") + ".")
    controls = [m for m in CONTROLS if m in methods]
    if controls:
        wins = [(pct(s), compare(best_values(TICKETS, s), best_values(controls, s))) for s in targets]
        wins = [(s, c) for s, c in wins if c.n]
        effect = [s for s, c in wins if c.up and dict(matched)[s].up]
        doc.p("Against the controls (same sparsity, " + " and ".join(METHOD_NAMES[m] for m in controls) + "), "
              "the better ticket per seed: " + (listing(wins, "ahead", "behind") or "no sparsity with both") + ". "
              + ("With one seed no lottery-ticket effect is called; the differences above are the evidence."
                 if not res.multi_seed else
                 f"A lottery-ticket effect (the ticket called within {MATCH_POINTS:g} point of the original and "
                 "called ahead of the controls) is seen at " + (", ".join(effect) if effect else "no sparsity")
                 + "."))
    else:
        doc.p("No reinit/random controls were run (python lottery_imp.py --controls reinit random), so the "
              "effect can only be judged against the original accuracy.")

    doc.h2("Task 2 versus Task 3")
    mag = {r["sparsity"]: r for r in res.magnitude if r["sparsity"]}
    sparsities = sorted(set(targets) | set(mag))
    cols = ["sparsity", "magnitude retrained (Task 2)"] + [METHOD_NAMES[m] for m in methods]
    cmp_rows = [[pct(s), acc_sd(mag.get(s), "retrained_acc")] + [acc_sd(_row_at(rows, m, s), "retrained_acc")
                                                                 for m in methods] for s in sparsities]
    doc.table(Table("task2_vs_task3", "Retrained test accuracy (%): weights kept (Task 2) vs rewound (Task 3)"
                    + seeds_caption(res), cols, cmp_rows))
    items = []
    for s in sparsities:
        if s in mag:
            kept = seed_values(res, lambda rep: rep.magnitude, "retrained_acc", sparsity=s)
            for m in TICKETS:
                if _at(rows, m, s) is not None:
                    items.append(f"{pct(s)}: {METHOD_NAMES[m]} vs magnitude retraining: "
                                 f"{compare(method_values(m, s), kept).says()}.")
    doc.bullets(items)
    cfg2 = next(iter(res.runs("magnitude").values()), {}).get("config", {})
    cfg3 = next(iter(res.runs("lottery").values()), {}).get("config", {})
    if cfg2 and cfg3:
        doc.p(f"Task 2 keeps the trained weights and fine-tunes for {cfg2.get('epochs')} epochs at lr "
              f"{cfg2.get('lr')}; Task 3 resets the surviving weights to the rewind point and trains "
              f"{cfg3.get('epochs')} epochs at lr {cfg3.get('lr')}, once per one-shot target and once per IMP "
              f"round.")
    doc.figure("accuracy_vs_sparsity")


LTH = "Frankle & Carbin 2019"


def claims(res):
    """Frankle & Carbin's three claims on this run: the ticket matches the original at the
    least sparse target, beats the controls at the sparsest target that has one, and IMP beats
    one-shot at the sparsest target both reach."""
    match = (f"A ticket (the mask on the rewound initial weights) trains to the original's accuracy at moderate "
             f"sparsity (within {MATCH_POINTS:g} point here; for ResNet only with warm-up or a lower lr)")
    control = "The same mask re-initialised, or a random mask, trains to a lower accuracy than the ticket"
    iterative = "Iterative pruning (IMP) gives better tickets at high sparsity than one-shot pruning"
    sources = (f"{LTH}, Sections 2 and 4", f"{LTH}, Section 2, Figure 4", f"{LTH}, Section 2, Figure 4")
    rows = res.lottery
    if not rows:
        return [not_run(c, s, "python lottery_imp.py") for c, s in zip((match, control, iterative), sources)]

    def at(method, s):
        return res.per_seed(lambda rep: _at(rep.lottery, method, s))

    def best(methods, s):
        return res.per_seed(lambda rep: _best(rep.lottery, methods, s))
    out = []
    ticket_sparsities = sorted({r["sparsity"] for r in rows if r.get("method") in TICKETS})
    dense = res.per_seed(lambda rep: (rep.lottery or [{}])[0].get("dense_acc"))
    if ticket_sparsities:
        s = ticket_sparsities[0]
        c = threshold(best(TICKETS, s), dense, MATCH_POINTS)
        out.append(Claim(match, sources[0], f"at {pct(s)}, the better ticket vs the original: {within_says(c)}", verdict_of(c)))
    else:
        out.append(not_run(match, sources[0], "python lottery_imp.py --methods oneshot imp"))
    with_control = [s for s in ticket_sparsities if any(_at(rows, m, s) is not None for m in CONTROLS)]
    if with_control:
        s = with_control[-1]
        c = compare(best(TICKETS, s), best(CONTROLS, s))
        out.append(Claim(control, sources[1], f"at {pct(s)}, the better ticket vs the better control: "
                         f"{c.says('ahead', 'behind')}", verdict_of(c)))
    else:
        out.append(not_run(control, sources[1], "python lottery_imp.py --controls reinit random"))
    both = [s for s in ticket_sparsities if _at(rows, "imp", s) is not None and _at(rows, "oneshot", s) is not None]
    if both:
        s = both[-1]
        c = compare(at("imp", s), at("oneshot", s))
        out.append(Claim(iterative, sources[2], f"at {pct(s)}, IMP vs one-shot: {c.says()}", verdict_of(c)))
    else:
        out.append(not_run(iterative, sources[2], "python lottery_imp.py --methods oneshot imp"))
    return out
