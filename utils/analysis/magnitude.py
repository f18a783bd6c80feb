"""Task 2: is retraining necessary after magnitude pruning, and does pruning improve accuracy?

When magnitude/summary.csv has a sparsity-0 row (the dense network fine-tuned with the same
schedule as the pruned ones), pruned-and-retrained is compared against both the original dense
network and that fine-tuned dense network: the extra epochs alone can raise accuracy, so only
the second comparison says whether pruning itself helps. Every comparison pairs the numbers by
seed and follows the report's noise rule (utils/noise.py).
"""
from utils.analysis.common import (MATCH_POINTS, Claim, acc, acc_sd, arch_label, combined, compare, listing,
                                   masks_paragraph, missing, not_run, pct, seed_values, seeds_caption, signed,
                                   threshold, verdict_of, verdict_table, within_says)
from utils.document import Table


def section(doc, res):
    _results(doc, res)
    verdict_table(doc, "magnitude", claims(res))


def _results(doc, res):
    rows = res.magnitude
    doc.h1("Task 2: magnitude pruning and retraining")
    if not rows:
        missing(doc, "results/magnitude/summary.csv", "python prune_magnitude.py")
        return
    tuned = next((r for r in rows if not r["sparsity"]), None)  # sparsity 0: fine-tuned dense
    pruned = [r for r in rows if r["sparsity"]]
    columns = ["sparsity", "original", "pruned", "retrained", "recovered by retraining", "retrained - original"]
    if tuned:
        columns.append("retrained - fine-tuned dense")

    def line(r):
        out = [pct(r["sparsity"]) + (" (dense, fine-tuned)" if r is tuned else ""), acc_sd(r, "dense_acc"),
               acc_sd(r, "pruned_acc"), acc_sd(r, "retrained_acc"), signed(r["retrained_acc"] - r["pruned_acc"]),
               signed(r["retrained_acc"] - r["dense_acc"])]
        return out + ([signed(r["retrained_acc"] - tuned["retrained_acc"])] if tuned else [])
    doc.table(Table("magnitude", f"Task 2: {arch_label(res, 'magnitude')} test accuracy (%) before pruning, after "
                    "pruning (not retrained) and after retraining" + seeds_caption(res), columns,
                    [line(r) for r in rows]))
    masks_paragraph(doc, rows, lambda r: pct(r["sparsity"]))
    doc.figure("magnitude_trajectories")
    if not pruned:
        doc.p("Only the sparsity-0 (fine-tuned dense) run is in the results: run python prune_magnitude.py "
              "with --sparsities above 0.")
        return

    def values(column, sparsity):
        return seed_values(res, lambda rep: rep.magnitude, column, sparsity=sparsity)

    doc.h2("Is retraining necessary, and how much does it recover?")
    items = []
    for r in pruned:
        s = r["sparsity"]
        dense, pr, re = values("dense_acc", s), values("pruned_acc", s), values("retrained_acc", s)
        items.append(f"At {pct(s)} sparsity ({acc(r['dense_acc'])}% original -> {acc(r['pruned_acc'])}% pruned -> "
                     f"{acc(r['retrained_acc'])}% retrained): pruned vs original {compare(pr, dense).says()}; "
                     f"retrained vs pruned {compare(re, pr).says()}; retrained vs original "
                     f"{compare(re, dense).says()}.")
    doc.bullets(items)
    necessary = [(pct(r["sparsity"]), threshold(values("pruned_acc", r["sparsity"]), values("dense_acc", r["sparsity"]),
                                                MATCH_POINTS)) for r in pruned]
    doc.p(f"Retraining is necessary where pruning alone loses more than {MATCH_POINTS:g} point of accuracy. "
          "Pruned (not retrained) against the original: "
          + listing(necessary, f"within {MATCH_POINTS:g} point (retraining not necessary)",
                    f"more than {MATCH_POINTS:g} point lower (retraining necessary)",
                    f"within noise of the {MATCH_POINTS:g}-point margin") + ".")
    doc.h2("Does pruning improve accuracy?")
    gains = [(pct(r["sparsity"]), compare(values("retrained_acc", r["sparsity"]), values("dense_acc", r["sparsity"])))
             for r in pruned]
    doc.p("Pruning plus retraining against the original network: "
          + listing(gains, "beats it", "below it") + ".")
    if tuned:
        base = values("retrained_acc", 0.0)
        doc.p(f"The original was trained {_fewer(res)}fewer epochs than the retrained networks. The dense network "
              f"fine-tuned with the same schedule reaches {acc(tuned['retrained_acc'])}% (against the original: "
              f"{compare(base, values('dense_acc', 0.0)).says('higher', 'lower')}), so the fair question is "
              "whether a pruned network beats it.")
        fair = [(pct(r["sparsity"]), compare(values("retrained_acc", r["sparsity"]), base)) for r in pruned]
        doc.p("Against the fine-tuned dense network: " + listing(fair, "pruning improves accuracy",
                                                                  "pruning lowers accuracy") + "."
              + ("" if any(c.up for _, c in fair) else
                 " Pruning is not called an improvement at any sparsity, so any gain over the original is not "
                 "shown to come from pruning rather than from the extra training."))
    else:
        doc.p("No sparsity-0 run (the dense network fine-tuned with the same schedule) is in the results, so "
              "the comparison above also credits pruning with the extra training epochs; run python "
              "prune_magnitude.py --sparsities 0 0.5 0.7 0.9 to separate the two.")


def _fewer(res):
    """'40 ' when the fine-tuning epochs are known from a Task 2 run's settings, else ''."""
    cfg = next(iter(res.runs("magnitude").values()), {}).get("config", {})
    return f"{cfg['epochs']} " if cfg.get("epochs") else ""


HAN = "Han et al. 2015"


def claims(res):
    """Han et al. 2015's two claims, tested at the sparsest pruned run (90% in the assignment)."""
    keep = ("Magnitude pruning then retraining keeps the original's accuracy with 9-13x fewer weights "
            f"(within {MATCH_POINTS:g} point here)")
    need = "Pruning without retraining loses accuracy at high sparsity; retraining recovers it (qualitative)"
    pruned = [r for r in res.magnitude if r["sparsity"]]
    if not pruned:
        return [not_run(keep, f"{HAN}, Table 1", "python prune_magnitude.py"),
                not_run(need, f"{HAN}, Figure 5", "python prune_magnitude.py")]
    s = max(r["sparsity"] for r in pruned)

    def values(column):
        return seed_values(res, lambda rep: rep.magnitude, column, sparsity=s)
    dense, cut, back = values("dense_acc"), values("pruned_acc"), values("retrained_acc")
    kept = threshold(back, dense, MATCH_POINTS)
    lost, recovered = threshold(cut, dense, MATCH_POINTS), compare(back, cut)
    return [Claim(keep, f"{HAN}, Table 1", f"at {pct(s)} sparsity, retrained vs original: {within_says(kept)}",
                  verdict_of(kept)),
            Claim(need, f"{HAN}, Figure 5",
                  f"at {pct(s)}: pruned vs original {within_says(lost)}; retrained vs pruned {recovered.says()}",
                  combined([verdict_of(lost, "down"), verdict_of(recovered)]))]
