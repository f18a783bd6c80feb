"""Task 2: is retraining necessary after magnitude pruning, and does pruning improve accuracy?

When magnitude/summary.csv has a sparsity-0 row (the dense network fine-tuned with the same
schedule as the pruned ones), pruned-and-retrained is compared against both the original dense
network and that fine-tuned dense network: the extra epochs alone can raise accuracy, so only
the second comparison says whether pruning itself helps.
"""
from utils.analysis.common import MATCH_POINTS, acc, arch_label, missing, pct, signed
from utils.document import Table


def section(doc, res):
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
        out = [pct(r["sparsity"]) + (" (dense, fine-tuned)" if r is tuned else ""), acc(r["dense_acc"]),
               acc(r["pruned_acc"]), acc(r["retrained_acc"]), signed(r["retrained_acc"] - r["pruned_acc"]),
               signed(r["retrained_acc"] - r["dense_acc"])]
        return out + ([signed(r["retrained_acc"] - tuned["retrained_acc"])] if tuned else [])
    doc.table(Table("magnitude", f"Task 2: {arch_label(res, 'magnitude')} test accuracy (%) before pruning, after "
                    "pruning (not retrained) and after retraining", columns, [line(r) for r in rows]))
    doc.figure("magnitude_trajectories")
    if not pruned:
        doc.p("Only the sparsity-0 (fine-tuned dense) run is in the results: run python prune_magnitude.py "
              "with --sparsities above 0.")
        return
    doc.h2("Is retraining necessary, and how much does it recover?")
    needed = [pct(r["sparsity"]) for r in pruned if r["dense_acc"] - r["pruned_acc"] > MATCH_POINTS]
    doc.bullets([f"At {pct(r['sparsity'])} sparsity pruning alone costs {r['dense_acc'] - r['pruned_acc']:.2f} "
                 f"points ({acc(r['dense_acc'])}% -> {acc(r['pruned_acc'])}%); retraining recovers "
                 f"{r['retrained_acc'] - r['pruned_acc']:.2f} points, ending "
                 f"{abs(r['retrained_acc'] - r['dense_acc']):.2f} points "
                 f"{'above' if r['retrained_acc'] >= r['dense_acc'] else 'below'} the original "
                 f"({acc(r['retrained_acc'])}%)." for r in pruned])
    if needed:
        doc.p(f"Retraining is necessary at {', '.join(needed)} sparsity, where pruning without it loses "
              f"more than {MATCH_POINTS:g} point of accuracy.")
    else:
        doc.p(f"On these results pruning alone never loses more than {MATCH_POINTS:g} point, so retraining "
              "is not needed at these sparsities.")
    doc.h2("Does pruning improve accuracy?")
    gains = [r for r in pruned if r["retrained_acc"] > r["dense_acc"]]
    if gains:
        doc.p("Pruning plus retraining beats the original network at "
              + ", ".join(f"{pct(r['sparsity'])} ({signed(r['retrained_acc'] - r['dense_acc'])} points)"
                          for r in gains) + ".")
    else:
        best = max(pruned, key=lambda r: r["retrained_acc"] - r["dense_acc"])
        doc.p(f"Pruning brings no accuracy improvement over the original here: the closest is "
              f"{pct(best['sparsity'])} sparsity at {signed(best['retrained_acc'] - best['dense_acc'])} points.")
    if tuned:
        base = tuned["retrained_acc"]
        doc.p(f"The original was trained {_fewer(res)}fewer epochs than the retrained networks. The dense network "
              f"fine-tuned with the same schedule reaches {acc(base)}% ({signed(base - tuned['dense_acc'])} "
              "points over the original), so the fair question is whether a pruned network beats it.")
        better = [r for r in pruned if r["retrained_acc"] > base]
        if better:
            doc.p("Against the fine-tuned dense network, pruning improves accuracy at "
                  + ", ".join(f"{pct(r['sparsity'])} ({signed(r['retrained_acc'] - base)} points)" for r in better)
                  + ".")
        else:
            best = max(pruned, key=lambda r: r["retrained_acc"])
            doc.p(f"Against the fine-tuned dense network, pruning improves accuracy at no sparsity: the best "
                  f"pruned network ({pct(best['sparsity'])}) is {signed(best['retrained_acc'] - base)} points "
                  "from it, so any gain over the original comes from the extra training, not from pruning.")
    else:
        doc.p("No sparsity-0 run (the dense network fine-tuned with the same schedule) is in the results, so "
              "the comparison above also credits pruning with the extra training epochs; run python "
              "prune_magnitude.py --sparsities 0 0.5 0.7 0.9 to separate the two.")


def _fewer(res):
    """'40 ' when the fine-tuning epochs are known from a Task 2 run's settings, else ''."""
    cfg = next(iter(res.runs("magnitude").values()), {}).get("config", {})
    return f"{cfg['epochs']} " if cfg.get("epochs") else ""
