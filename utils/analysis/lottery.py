"""Task 3: is there a lottery-ticket effect (tickets against the original and the controls),
and how do Task 2's fine-tuned networks compare with Task 3's rewound tickets?"""
from utils.analysis.common import MATCH_POINTS, acc, missing, pct, signed
from utils.document import Table

METHOD_ORDER = ["oneshot", "imp", "reinit", "random"]
METHOD_NAMES = {"oneshot": "one-shot ticket", "imp": "IMP ticket", "reinit": "re-initialised (control)",
                "random": "random mask (control)"}


def _method_rows(rows, method):
    return sorted((r for r in rows if r.get("method") == method), key=lambda r: (r["sparsity"], r.get("round") or 0))


def _at(rows, method, sparsity):
    """The retrained accuracy of `method` at `sparsity` (the last round landing there), or None."""
    hits = [r for r in _method_rows(rows, method) if abs(r["sparsity"] - sparsity) < 1e-9]
    return hits[-1]["retrained_acc"] if hits else None


def section(doc, res):
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
                               acc(r["dense_acc"]), acc(r["ticket_acc"]), acc(r["retrained_acc"])])
    doc.table(Table("lottery", "Task 3: test accuracy (%) of the original network, of the ticket (mask on the "
                    "rewound weights, before training) and of the trained ticket",
                    ["method", "sparsity", "round", "original", "ticket (untrained)", "retrained"], table_rows))
    for m in methods:
        doc.figure(f"lottery_{m}_trajectories" if m in ("oneshot", "imp") else f"lottery_control_{m}_trajectories")

    doc.h2("Is there a lottery-ticket effect?")
    dense_acc = rows[0].get("dense_acc")
    targets = sorted({r["sparsity"] for r in rows if r.get("method") == "oneshot"}) or \
        sorted({r["sparsity"] for r in rows})
    items = []
    for s in targets:
        parts = []
        for m in ("oneshot", "imp"):
            a = _at(rows, m, s)
            if a is not None:
                parts.append(f"{METHOD_NAMES[m]} {acc(a)}% ({signed(a - dense_acc)} vs original)")
        for m in ("reinit", "random"):
            a = _at(rows, m, s)
            if a is not None:
                best = max(x for x in (_at(rows, "oneshot", s), _at(rows, "imp", s)) if x is not None) \
                    if any(x is not None for x in (_at(rows, "oneshot", s), _at(rows, "imp", s))) else None
                parts.append(f"{METHOD_NAMES[m]} {acc(a)}%" + (f" (best ticket {signed(best - a)} ahead)"
                                                             if best is not None else ""))
        if parts:
            items.append(f"{pct(s)} sparsity: " + "; ".join(parts) + ".")
    doc.bullets(items)
    matched = [s for s in targets if any((_at(rows, m, s) or -1e9) >= dense_acc - MATCH_POINTS
                                         for m in ("oneshot", "imp"))]
    doc.p(f"A ticket trained from the rewound weights reaches within {MATCH_POINTS:g} point of the original "
          f"({acc(dense_acc)}%) at " + (", ".join(pct(s) for s in matched) if matched else "no sparsity tested")
          + ".")
    controls = [m for m in ("reinit", "random") if m in methods]
    if controls:
        wins = []
        for s in targets:
            tickets = [x for x in (_at(rows, "oneshot", s), _at(rows, "imp", s)) if x is not None]
            ctrl = [x for x in (_at(rows, m, s) for m in controls) if x is not None]
            if tickets and ctrl:
                wins.append((s, max(tickets) - max(ctrl)))
        beat = [f"{pct(s)} ({signed(d)} points)" for s, d in wins if d > 0]
        doc.p("Against the controls (same sparsity, " + " and ".join(METHOD_NAMES[m] for m in controls) + "), "
              "the better ticket is ahead at " + (", ".join(beat) if beat else "no sparsity") + ". "
              + ("A lottery-ticket effect is seen where the ticket both matches the original and beats the "
                 "controls." if beat else "So these results show no lottery-ticket effect over the controls."))
    else:
        doc.p("No reinit/random controls were run (python lottery_imp.py --controls reinit random), so the "
              "effect can only be judged against the original accuracy.")

    doc.h2("Task 2 versus Task 3")
    mag = {r["sparsity"]: r["retrained_acc"] for r in res.magnitude if r["sparsity"]}
    sparsities = sorted(set(targets) | set(mag))
    cols = ["sparsity", "magnitude retrained (Task 2)"] + [METHOD_NAMES[m] for m in methods]
    cmp_rows = [[pct(s), acc(mag.get(s))] + [acc(_at(rows, m, s)) for m in methods] for s in sparsities]
    doc.table(Table("task2_vs_task3", "Retrained test accuracy (%): weights kept (Task 2) vs rewound (Task 3)",
                    cols, cmp_rows))
    items = []
    for s in sparsities:
        if s in mag:
            for m in ("oneshot", "imp"):
                a = _at(rows, m, s)
                if a is not None:
                    items.append(f"{pct(s)}: {METHOD_NAMES[m]} {signed(a - mag[s])} points vs magnitude retraining.")
    doc.bullets(items)
    cfg2 = next(iter(res.runs("magnitude").values()), {}).get("config", {})
    cfg3 = next(iter(res.runs("lottery").values()), {}).get("config", {})
    if cfg2 and cfg3:
        doc.p(f"Task 2 keeps the trained weights and fine-tunes for {cfg2.get('epochs')} epochs at lr "
              f"{cfg2.get('lr')}; Task 3 resets the surviving weights to the rewind point and trains "
              f"{cfg3.get('epochs')} epochs at lr {cfg3.get('lr')}, once per one-shot target and once per IMP "
              f"round.")
    doc.figure("accuracy_vs_sparsity")
