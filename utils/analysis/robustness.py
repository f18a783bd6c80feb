"""Bonus: are pruned networks more robust, and what does adversarial training add?"""
from utils.analysis.common import acc, pct, signed
from utils.document import Table


def section(doc, res):
    rows = res.robustness
    if not rows:
        doc.h1("Bonus: robustness")
        doc.p("No results (results/robustness/summary.csv): run python robustness.py.")
        return
    doc.h1("Bonus: robustness of pruned networks")
    rows = sorted(rows, key=lambda r: (str(r.get("arch")), str(r.get("training")), r["sparsity"] or 0, str(r["model"])))
    doc.table(Table("robustness", "Test accuracy (%) on clean images and under FGSM / PGD attack",
                    ["model", "arch", "training", "sparsity", "clean", "FGSM", "PGD"],
                    [[str(r["model"]), str(r.get("arch")), str(r.get("training")), pct(r["sparsity"] or 0),
                      acc(r["clean_acc"]), acc(r["fgsm_acc"]), acc(r["pgd_acc"])] for r in rows]))
    doc.figure("robustness")
    doc.h2("Are pruned networks more robust?")
    items = []
    for (arch, training) in sorted({(str(r.get("arch")), str(r.get("training"))) for r in rows}):
        sub = [r for r in rows if str(r.get("arch")) == arch and str(r.get("training")) == training]
        dense = [r for r in sub if not r["sparsity"]]
        pruned = [r for r in sub if r["sparsity"]]
        if not dense or not pruned:
            continue
        d = dense[0]
        better = [r for r in pruned if r["pgd_acc"] > d["pgd_acc"]]
        best = max(pruned, key=lambda r: r["pgd_acc"])
        items.append(f"{arch}, {training} training: {len(better)} of {len(pruned)} pruned networks beat the dense "
                     f"one under PGD ({acc(d['pgd_acc'])}%); the most robust is {best['model']} at "
                     f"{acc(best['pgd_acc'])}% ({signed(best['pgd_acc'] - d['pgd_acc'])} points).")
    doc.bullets(items)
    pgd = [r for r in rows if r.get("training") == "pgd"]
    nat = [r for r in rows if r.get("training") == "natural"]
    if pgd and nat:
        doc.p(f"Adversarial training: best PGD accuracy {acc(max(r['pgd_acc'] for r in pgd))}% with PGD training "
              f"vs {acc(max(r['pgd_acc'] for r in nat))}% with natural training.")
