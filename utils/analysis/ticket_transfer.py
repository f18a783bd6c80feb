"""The report's section for ticket_transfer.py: per-round tables and computed answers.

Every number comes from results/ticket_transfer/summary.csv when the report is made: per
experiment, arch and training side, the own ticket, the transferred ticket and the controls per
round; transferred − own; the sparsest round within MATCH_POINTS of the dense network; whether
the transferred ticket beats the random control.
"""
from utils.plots.ticket_transfer import COMMAND, groups, kind, summary_rows
from utils.analysis.common import acc, signed
from utils.document import Table

MATCH_POINTS = 1.0  # "within 1 point of the dense network"
KINDS = ("own", "transferred", "random", "reinit")
NAMES = {"imp": "winning tickets on full MNIST", "data": "transfer across two halves of the training data",
         "labels": "transfer across digits 0-4 and 5-9", "optimizer": "transfer across optimizers (Adam, SGD)"}


def by_round(rows):
    """{round: {kind: row}} (round 00 is the dense network, kind 'own')."""
    out = {}
    for r in rows:
        out.setdefault(int(r["round"]), {})[kind(r)] = r
    return dict(sorted(out.items()))


def sparsest_within(rounds, k, dense_acc):
    """(round, density) of the sparsest round whose `k` ticket is within MATCH_POINTS of dense."""
    hits = [(rnd, v[k]["density"]) for rnd, v in rounds.items()
            if k in v and v[k]["final_acc"] >= dense_acc - MATCH_POINTS]
    return min(hits, key=lambda h: h[1]) if hits else None


def _within_text(hit, what):
    if hit is None:
        return f"No round of the {what} is within {MATCH_POINTS:g} point of the dense network"
    return f"The sparsest round at which the {what} is within {MATCH_POINTS:g} point of the dense " \
           f"network (or above it) is round {hit[0]} ({100 * hit[1]:.3g}% of the weights)"


def side_answers(rounds, dense_acc):
    """Sentences with the computed answers for one (experiment, arch, side)."""
    pruned = {rnd: v for rnd, v in rounds.items() if rnd > 0}
    items = []
    pairs = [(v["transferred"]["final_acc"] - v["own"]["final_acc"], rnd) for rnd, v in pruned.items()
             if "transferred" in v and "own" in v]
    if pairs:
        mean = sum(d for d, _ in pairs) / len(pairs)
        last_d, last_r = pairs[-1]
        items.append(f"Transferred - own: {signed(mean)} points on average over rounds 1-{pairs[-1][1]}, "
                     f"{signed(last_d)} at the sparsest round ({last_r}).")
    items.append(_within_text(sparsest_within(rounds, "own", dense_acc), "own ticket") + ".")
    if pairs:
        items.append(_within_text(sparsest_within(rounds, "transferred", dense_acc), "transferred ticket") + ".")
    for ref in ("transferred", "own"):
        wins = [(v[ref]["final_acc"] - v["random"]["final_acc"]) for v in pruned.values() if ref in v and "random" in v]
        if wins and (ref == "transferred" or not pairs):
            beat = sum(d > 0 for d in wins)
            verdict = "beats" if beat > len(wins) / 2 else "does not beat"
            items.append(f"The {ref} ticket {verdict} the random control: ahead at {beat} of {len(wins)} rounds, "
                         f"by {signed(sum(wins) / len(wins))} points on average.")
    return items


def section(doc, res):
    doc.h1("Lottery tickets on MNIST and their transfer (ticket_transfer.py)")
    rows = summary_rows(res)
    if not rows:
        doc.p(f"No results yet (results/ticket_transfer/summary.csv): run {COMMAND}.")
        return
    doc.p("Per-layer iterative magnitude pruning with fixed rounds (Frankle & Carbin 2019), every "
          "ticket rewound to one shared initialisation; each side of an experiment also trains the other "
          "side's ticket (Morcos et al. 2019) and a random mask with the same per-layer counts. Accuracies "
          "are test accuracies (%) after training, on the images of the side trained on.")
    g = groups(rows, {"imp", "data", "labels", "optimizer"})
    done_figs = set()
    for experiment in ("imp", "data", "labels", "optimizer"):
        keys = [k for k in g if k[0] == experiment]
        if not keys:
            continue
        doc.h2(f"{experiment}: {NAMES[experiment]}")
        for key in keys:
            _, arch, side = key
            rounds = by_round(g[key])
            dense = rounds.get(0, {}).get("own")
            if dense is None:
                continue
            kinds = [k for k in KINDS if any(k in v for v in rounds.values())]
            others = sorted({r["mask_from"] for r in g[key] if kind(r) == "transferred"})
            doc.h3(f"{arch}, trained on {side}" + (f" (transferred masks from {', '.join(others)})" if others else ""))
            columns = ["round", "% remaining"] + kinds + (["transferred - own"] if "transferred" in kinds else [])
            table_rows = []
            for rnd, v in rounds.items():
                line = [f"{rnd}", f"{100 * next(iter(v.values()))['density']:.3g}"]
                line += [acc(v[k]["final_acc"]) if k in v else "" for k in kinds]
                if "transferred" in kinds:
                    line.append(signed(v["transferred"]["final_acc"] - v["own"]["final_acc"])
                                if "transferred" in v and "own" in v else "")
                table_rows.append(line)
            doc.table(Table(f"ticket_transfer_{experiment}_{arch}_{side}",
                            f"{experiment} / {arch}, trained on {side}: test accuracy (%) after training, "
                            f"per IMP round (dense {acc(dense['final_acc'])}%)", columns, table_rows))
            doc.bullets(side_answers(rounds, dense["final_acc"]))
        figures = ["ticket_imp_accuracy", "ticket_imp_trajectories"] if experiment == "imp" else ["ticket_transfer"]
        for name in figures:
            if name not in done_figs:
                doc.figure(name)
                done_figs.add(name)
