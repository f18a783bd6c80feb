"""The report's section for ticket_transfer.py: per-round tables and computed answers.

Every number comes from results/ticket_transfer/summary.csv when the report is made: per
experiment, arch and training side, the own ticket, the transferred ticket and the controls per
round; transferred − own; the sparsest round within MATCH_POINTS of the dense network; whether
the transferred ticket beats the random control. Every comparison pairs the numbers by seed and
follows the report's noise rule (utils/noise.py).
"""
import statistics

from utils.plots.ticket_transfer import COMMAND, groups, kind, summary_rows
from utils.analysis.common import acc, acc_sd, compare, listing, masks_paragraph, seeds_caption, signed, threshold
from utils.document import Table

EXPERIMENTS = {"imp", "data", "labels", "optimizer"}

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


def seed_rounds(res, key):
    """Per seed, `by_round` of the (experiment, arch, side) group `key` ({} where a seed lacks it)."""
    return res.per_seed(lambda rep: by_round(groups(summary_rows(rep), EXPERIMENTS).get(key, [])))


def _acc(per_seed, rnd, k):
    """Per-seed final accuracy of kind `k` at round `rnd` (None where a seed lacks it)."""
    return [v.get(rnd, {}).get(k, {}).get("final_acc") for v in per_seed]


def _mean_over(per_seed, rounds, k):
    """Per seed, the mean final accuracy of kind `k` over `rounds` (None if one is missing)."""
    out = []
    for v in per_seed:
        found = [v.get(rnd, {}).get(k, {}).get("final_acc") for rnd in rounds]
        out.append(statistics.fmean(found) if rounds and None not in found else None)
    return out


def sparsest_within(rounds, per_seed, k):
    """(round, density) of the sparsest round whose `k` ticket is called within MATCH_POINTS of
    the dense network (round 0) by the noise rule, or None."""
    dense = _acc(per_seed, 0, "own")
    hits = [(rnd, v[k]["density"]) for rnd, v in rounds.items()
            if rnd > 0 and k in v and threshold(_acc(per_seed, rnd, k), dense, MATCH_POINTS).up]
    return min(hits, key=lambda h: h[1]) if hits else None


def _within_text(rounds, per_seed, k, what):
    """The sparsest round called within MATCH_POINTS of dense; one seed: the differences per round."""
    if len(per_seed) == 1:
        dense = _acc(per_seed, 0, "own")
        per = [(f"round {rnd}", compare(_acc(per_seed, rnd, k), dense))
               for rnd, v in rounds.items() if rnd > 0 and k in v]
        return f"The {what} against the dense network: {listing(per)}"
    hit = sparsest_within(rounds, per_seed, k)
    if hit is None:
        return f"No round of the {what} is called within {MATCH_POINTS:g} point of the dense network"
    return f"The sparsest round at which the {what} is called within {MATCH_POINTS:g} point of the dense " \
           f"network (or above it) is round {hit[0]} ({100 * hit[1]:.3g}% of the weights)"


def side_answers(rounds, per_seed):
    """Sentences with the computed answers for one (experiment, arch, side): `rounds` its mean
    `by_round`, `per_seed` the same per seed (`seed_rounds`)."""
    pruned = {rnd: v for rnd, v in rounds.items() if rnd > 0}
    items = []
    moved = [rnd for rnd, v in pruned.items() if "transferred" in v and "own" in v]
    if moved:
        mean = compare(_mean_over(per_seed, moved, "transferred"), _mean_over(per_seed, moved, "own"))
        last = compare(_acc(per_seed, moved[-1], "transferred"), _acc(per_seed, moved[-1], "own"))
        items.append(f"Transferred - own, averaged over rounds 1-{moved[-1]}: {mean.says()}; at the sparsest "
                     f"round ({moved[-1]}): {last.says()}.")
    items.append(_within_text(rounds, per_seed, "own", "own ticket") + ".")
    if moved:
        items.append(_within_text(rounds, per_seed, "transferred", "transferred ticket") + ".")
    for ref in ("transferred", "own"):
        both = [rnd for rnd, v in pruned.items() if ref in v and "random" in v]
        if both and (ref == "transferred" or not moved):
            per = [compare(_acc(per_seed, rnd, ref), _acc(per_seed, rnd, "random")) for rnd in both]
            mean = compare(_mean_over(per_seed, both, ref), _mean_over(per_seed, both, "random"))
            if len(per_seed) == 1:
                items.append(f"The {ref} ticket against the random control, averaged over {len(both)} rounds: "
                             f"{mean.says()}; per round: "
                             + listing([(f"round {r}", c) for r, c in zip(both, per)]) + ".")
            else:
                verdict = "beats" if mean.up else "trails" if mean.down else "is within noise of"
                items.append(f"The {ref} ticket {verdict} the random control, averaged over {len(both)} rounds "
                             f"({mean.says('ahead', 'behind')}); called ahead at {sum(c.up for c in per)} of "
                             f"{len(both)} rounds, behind at {sum(c.down for c in per)}.")
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
    g = groups(rows, EXPERIMENTS)
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
                line += [acc_sd(v[k], "final_acc") if k in v else "" for k in kinds]
                if "transferred" in kinds:
                    line.append(signed(v["transferred"]["final_acc"] - v["own"]["final_acc"])
                                if "transferred" in v and "own" in v else "")
                table_rows.append(line)
            doc.table(Table(f"ticket_transfer_{experiment}_{arch}_{side}",
                            f"{experiment} / {arch}, trained on {side}: test accuracy (%) after training, "
                            f"per IMP round (dense {acc(dense['final_acc'])}%)" + seeds_caption(res), columns, table_rows))
            masks_paragraph(doc, g[key], lambda r: f"round {int(r['round'])} {r['ticket']} mask of {r['mask_from']}")
            doc.bullets(side_answers(rounds, seed_rounds(res, key)))
        figures = ["ticket_imp_accuracy", "ticket_imp_trajectories"] if experiment == "imp" else ["ticket_transfer"]
        for name in figures:
            if name not in done_figs:
                doc.figure(name)
                done_figs.add(name)
