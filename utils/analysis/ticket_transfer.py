"""The report's section for ticket_transfer.py: per-round tables and computed answers.

Every number comes from results/ticket_transfer/summary.csv when the report is made: per
experiment, arch and training side, the own ticket, the transferred ticket and the controls per
round; transferred − own; the sparsest round within MATCH_POINTS of the dense network; whether
the transferred ticket beats the random control. Every comparison pairs the numbers by seed and
follows the report's noise rule (utils/noise.py).
"""
import statistics

from utils.plots.ticket_transfer import COMMAND, groups, kind, summary_rows
from utils.analysis.common import (NOT_TESTABLE, Claim, acc, acc_sd, combined, compare, listing,
                                   masks_paragraph, not_run, seeds_caption, signed, threshold, verdict_of,
                                   verdict_table)
from utils.document import Table
from utils.ticket_transfer import EXPERIMENTS as RECIPES

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


def remaining(rounds, rnd):
    """'0.166% of the weights remaining' at round `rnd` of a side's `by_round`."""
    return f"{100 * next(iter(rounds[rnd].values()))['density']:.3g}% of the weights remaining"


def span(rounds, rnds):
    """'rounds 1-15 (65%-0.166% of the weights remaining)'."""
    first, last = (100 * next(iter(rounds[r].values()))["density"] for r in (rnds[0], rnds[-1]))
    return f"rounds {rnds[0]}-{rnds[-1]} ({first:.3g}%-{last:.3g}% of the weights remaining)"


def _within_text(rounds, per_seed, k, what):
    """The sparsest round called within MATCH_POINTS of dense; one seed: the differences per round."""
    if len(per_seed) == 1:
        dense = _acc(per_seed, 0, "own")
        per = [(f"round {rnd} ({100 * v[k]['density']:.3g}%)", compare(_acc(per_seed, rnd, k), dense))
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
        items.append(f"Transferred - own (both at the same round, so the same sparsity), averaged over "
                     f"{span(rounds, moved)}: {mean.says()}; at the sparsest round ({moved[-1]}, "
                     f"{remaining(rounds, moved[-1])}): {last.says()}.")
    items.append(_within_text(rounds, per_seed, "own", "own ticket") + ".")
    if moved:
        items.append(_within_text(rounds, per_seed, "transferred", "transferred ticket") + ".")
    for ref in ("transferred", "own"):
        both = [rnd for rnd, v in pruned.items() if ref in v and "random" in v]
        if both and (ref == "transferred" or not moved):
            per = [compare(_acc(per_seed, rnd, ref), _acc(per_seed, rnd, "random")) for rnd in both]
            mean = compare(_mean_over(per_seed, both, ref), _mean_over(per_seed, both, "random"))
            if len(per_seed) == 1:
                items.append(f"The {ref} ticket against the random control, averaged over {span(rounds, both)}: "
                             f"{mean.says()}; per round: "
                             + listing([(f"round {r} ({100 * pruned[r][ref]['density']:.3g}%)", c)
                                        for r, c in zip(both, per)]) + ".")
            else:
                verdict = "beats" if mean.up else "trails" if mean.down else "is within noise of"
                items.append(f"The {ref} ticket {verdict} the random control, averaged over {span(rounds, both)} "
                             f"({mean.says('ahead', 'behind')}); called ahead at {sum(c.up for c in per)} of "
                             f"{len(both)} rounds, behind at {sum(c.down for c in per)}.")
    return items


def sides_at_same_round(res, g, experiment, arch):
    """One sentence comparing the sides of (experiment, arch) at the same round: the sparsest
    round every side ran with a transferred ticket, its sparsity named, transferred - own per side."""
    keys = [k for k in g if k[:2] == (experiment, arch)]
    per_side = {k: by_round(g[k]) for k in keys}
    common = set.intersection(*({r for r, v in rounds.items() if r > 0 and "transferred" in v and "own" in v}
                                for rounds in per_side.values())) if keys else set()
    if len(keys) < 2 or not common:
        return None
    rnd = max(common)
    parts = []
    for key, rounds in per_side.items():
        v, per_seed = rounds[rnd], seed_rounds(res, key)
        c = compare(_acc(per_seed, rnd, "transferred"), _acc(per_seed, rnd, "own"))
        parts.append(f"trained on {key[2]}, the {v['transferred']['mask_from']} ticket "
                     f"{acc(v['transferred']['final_acc'])}% vs its own {acc(v['own']['final_acc'])}% "
                     f"({c.says()})")
    return (f"Both sides at the same round, {rnd} ({remaining(per_side[keys[0]], rnd)}), {arch}: "
            + "; ".join(parts) + ".")


def section(doc, res):
    _results(doc, res)
    verdict_table(doc, "ticket_transfer", claims(res))


def _results(doc, res):
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
        for arch in dict.fromkeys(k[1] for k in keys):
            text = sides_at_same_round(res, g, experiment, arch)
            if text:
                doc.p(text)
        figures = ["ticket_imp_accuracy", "ticket_imp_trajectories"] if experiment == "imp" else ["ticket_transfer"]
        for name in figures:
            if name not in done_figs:
                doc.figure(name)
                done_figs.add(name)


REPORT = "the IE643 report"
# The report's claims: (experiment, arch) -> (claim, where it is, the density the claim is made at
# (None: at the report's last round, RECIPES[experiment].rounds)).
WINNING = {"lenet300": ("LeNet-300-100 keeps about the dense accuracy with more than 90% of the weights pruned",
                        "Section 7.1, Figure 1 comments", 0.10),
           "lenet5": ("LeNet-5 keeps about the dense accuracy with more than 85% of the weights pruned",
                      "Section 7.1, Figure 2 comments", 0.15)}
TRANSFER = {"data": ("A ticket from one data half trains on the other half as well as that half's own ticket "
                     "(96.14% vs 95.74%; here: within 1 point of the own ticket)", "Section 7.2, Task 1 results; Table 2", "up"),
            "labels": ("The digits 0-4 ticket trained on digits 5-9 fails: 21.15% (97.23% on digits 0-4), after "
                       "15 rounds at 35% (here: more than 1 point below the 5-9 side's own ticket)", "Section 7.2, Task 2 results; Table 2", "down"),
            "optimizer": ("Tickets do not depend on the optimizer: Adam's and SGD's tickets about equal "
                          "(97.17% vs 97.52%; here: each transferred within 1 point of the own ticket)", "Section 7.2, Task 3 results; Table 2", "up")}


def claims(res):
    """The IE643 report's claims, each at the report's sparsity: a winning ticket within
    MATCH_POINTS of dense beyond the report's pruned fraction; for a transfer, transferred - own at
    the report's last round (Table 2), within MATCH_POINTS for data and optimizer, more than
    MATCH_POINTS below for labels (the 0-4 ticket on digits 5-9). A run that stops short of the
    report's round or sparsity cannot test the claim: not testable at this scale."""
    g = groups(summary_rows(res), EXPERIMENTS)
    out = []
    for arch, (claim, where, density) in WINNING.items():
        keys = [k for k in g if k[:2] == ("imp", arch)]
        if not keys:
            out.append(not_run(claim, f"{REPORT}, {where}", f"{COMMAND} --experiments imp --archs {arch}"))
            continue
        rounds, per_seed = by_round(g[keys[0]]), seed_rounds(res, keys[0])
        past = [r for r, v in rounds.items() if r > 0 and "own" in v and v["own"]["density"] <= density + 1e-12]
        if not past:
            sparsest = max(rounds)
            out.append(Claim(claim, f"{REPORT}, {where}", f"the sparsest round, {sparsest}, keeps "
                             f"{remaining(rounds, sparsest)}: short of {100 * density:g}%", NOT_TESTABLE))
            continue
        c = threshold(_acc(per_seed, past[0], "own"), _acc(per_seed, 0, "own"), MATCH_POINTS)
        out.append(Claim(claim, f"{REPORT}, {where}", f"round {past[0]} ({remaining(rounds, past[0])}): own ticket "
                         f"vs dense {c.says()}", verdict_of(c)))
    for experiment, (claim, where, expect) in TRANSFER.items():
        keys = [k for k in g if k[0] == experiment and k[1] == "lenet300"]
        # labels: the claim is about the 0-4 ticket on digits 5-9; the others hold for every side
        keys = [k for k in keys if experiment != "labels" or k[2] == "digits5to9"]
        if not keys:
            out.append(not_run(claim, f"{REPORT}, {where}", f"{COMMAND} --experiments {experiment}"))
            continue
        target = RECIPES[experiment].rounds
        parts, verdicts = [], []
        for key in keys:
            rounds, per_seed = by_round(g[key]), seed_rounds(res, key)
            moved = [r for r, v in rounds.items() if r > 0 and "transferred" in v and "own" in v]
            if not moved:
                continue
            rnd = target if target in moved else moved[-1]
            c = threshold(_acc(per_seed, rnd, "transferred"), _acc(per_seed, rnd, "own"), MATCH_POINTS)
            v = rounds[rnd]
            parts.append(f"trained on {key[2]}, round {rnd} ({remaining(rounds, rnd)}): the "
                         f"{v['transferred']['mask_from']} ticket {acc(v['transferred']['final_acc'])}% vs own "
                         f"{acc(v['own']['final_acc'])}%, {c.delta()}"
                         + ("" if rnd == target else f"; the report's round {target} not reached"))
            verdicts.append(verdict_of(c, expect) if rnd == target else NOT_TESTABLE)
        if not parts:
            out.append(not_run(claim, f"{REPORT}, {where}", f"{COMMAND} --experiments {experiment}"))
            continue
        out.append(Claim(claim, f"{REPORT}, {where}", "; ".join(parts), combined(verdicts)))
    return out
