"""Bonus: are pruned networks more robust, and what does adversarial training add? Every
comparison pairs the numbers by seed and follows the report's noise rule (utils/noise.py)."""
from utils.analysis.common import (MATCH_POINTS, Claim, acc, acc_sd, combined, compare, listing,
                                   masks_paragraph, not_run, pct, same, seeds_caption, threshold, verdict_of,
                                   verdict_table, within_says)
from utils.document import Table
from utils.replicates import SUMMARY_KEYS


def _values(res, row, column):
    """Per-seed `column` of the robustness row identified like `row` (its key columns)."""
    keys = [k for k in SUMMARY_KEYS["robustness"] if k in row]

    def one(rep):
        hit = next((r for r in rep.robustness if all(same(r.get(k), row.get(k)) for k in keys)), None)
        return None if hit is None else hit.get(column)
    return res.per_seed(one)


def _best_pgd(res, training):
    """Per seed, the best PGD accuracy among the networks with that training."""
    def one(rep):
        found = [r["pgd_acc"] for r in rep.robustness if r.get("training") == training and r.get("pgd_acc") is not None]
        return max(found) if found else None
    return res.per_seed(one)


def section(doc, res):
    _results(doc, res)
    verdict_table(doc, "robustness", claims(res))


def _results(doc, res):
    rows = res.robustness
    if not rows:
        doc.h1("Bonus: robustness")
        doc.p("No results (results/robustness/summary.csv): run python robustness.py.")
        return
    doc.h1("Bonus: robustness of pruned networks")
    rows = sorted(rows, key=lambda r: (str(r.get("arch")), str(r.get("training")), r["sparsity"] or 0, str(r["model"])))
    doc.table(Table("robustness", "Test accuracy (%) on clean images and under FGSM / PGD attack" + seeds_caption(res),
                    ["model", "arch", "training", "sparsity", "clean", "FGSM", "PGD"],
                    [[str(r["model"]), str(r.get("arch")), str(r.get("training")), pct(r["sparsity"] or 0),
                      acc_sd(r, "clean_acc"), acc_sd(r, "fgsm_acc"), acc_sd(r, "pgd_acc")] for r in rows]))
    masks_paragraph(doc, rows, lambda r: str(r["model"]))
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
        base = _values(res, d, "pgd_acc")
        vs = [(str(r["model"]), compare(_values(res, r, "pgd_acc"), base)) for r in pruned]
        text = f"{arch}, {training} training, pruned vs dense under PGD ({acc(d['pgd_acc'])}%): "
        if res.multi_seed:
            text += (f"{sum(c.up for _, c in vs)} of {len(vs)} pruned networks called more robust; "
                     + listing(vs, "more robust", "less robust", count_noise=True))
        else:
            text += listing(vs)
        items.append(text + ".")
    doc.bullets(items)
    pgd = [r for r in rows if r.get("training") == "pgd"]
    nat = [r for r in rows if r.get("training") == "natural"]
    if pgd and nat:
        c = compare(_best_pgd(res, "pgd"), _best_pgd(res, "natural"))
        doc.p(f"Adversarial training: best PGD accuracy {acc(max(r['pgd_acc'] for r in pgd))}% with PGD training "
              f"vs {acc(max(r['pgd_acc'] for r in nat))}% with natural training (best of each, per seed): "
              f"{c.says('higher with PGD training', 'lower with PGD training')}.")


def claims(res):
    """The assignment's hypothesis (pruned networks are more robust: every pruned network against
    its dense one under PGD) and Li et al.'s (an adversarially trained ticket keeps the dense
    adversarial network's robustness, within MATCH_POINTS)."""
    robust = "Pruned networks are more robust (higher PGD accuracy) than the dense network they come from"
    keeps = (f"A pruned ticket trained adversarially keeps the robustness of the dense adversarially trained "
             f"network (within {MATCH_POINTS:g} point of its PGD accuracy here)")
    sources = ("the assignment, Optional Task", "Li et al. 2020 (arXiv 2003.05733), abstract")
    rows = res.robustness
    if not rows:
        return [not_run(c, s, "python robustness.py") for c, s in zip((robust, keeps), sources)]
    parts = {"natural": [], "pgd": []}
    verdicts = {"natural": [], "pgd": []}
    for r in rows:
        training = str(r.get("training"))
        dense = next((d for d in rows if not d["sparsity"] and str(d.get("arch")) == str(r.get("arch"))
                      and str(d.get("training")) == training), None)
        if not r["sparsity"] or dense is None or training not in parts:
            continue
        if training == "natural":
            c = compare(_values(res, r, "pgd_acc"), _values(res, dense, "pgd_acc"))
            verdicts[training].append(verdict_of(c))
        else:
            c = threshold(_values(res, r, "pgd_acc"), _values(res, dense, "pgd_acc"), MATCH_POINTS)
            verdicts[training].append(verdict_of(c))
        word = c.word("more robust", "less robust") if training == "natural" else \
            c.word(f"within {MATCH_POINTS:g} point", f"more than {MATCH_POINTS:g} point below")
        parts[training].append((f"{r['model']} ({r.get('arch')})", word, c))
    out = []
    for training, claim, source in (("natural", robust, sources[0]), ("pgd", keeps, sources[1])):
        if parts[training]:
            out.append(Claim(claim, source, _summary(parts[training]), combined(verdicts[training])))
        else:
            out.append(not_run(claim, source, f"python robustness.py with {training} training and a dense network"))
    return out


def _summary(parts):
    """One cell for many networks: how many fall under each verdict word, and the networks with the
    largest and the smallest difference (every network's numbers are in the robustness table)."""
    words = {}
    for _, word, _ in parts:
        words[word] = words.get(word, 0) + 1
    text = (f"{len(parts)} pruned network{'s' * (len(parts) != 1)} vs their dense one, PGD accuracy: "
            + ", ".join(f"{n} {w}" for w, n in words.items()))
    known = [p for p in parts if p[2].n]
    if known:
        low, high = min(known, key=lambda p: p[2].diff), max(known, key=lambda p: p[2].diff)
        text += f"; largest {high[0]}: {high[2].delta()}"
        if low is not high:
            text += f"; smallest {low[0]}: {low[2].delta()}"
    return text
