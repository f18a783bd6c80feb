"""EarlyCroP's report section: the paper's table and the answers, computed from
results/earlycrop/{summary.csv,detection.json} when the report is made. Every accuracy
comparison pairs the numbers by seed and follows the report's noise rule (utils/noise.py)."""
from utils.plots.earlycrop import LABELS, summary_rows
from utils.analysis.common import (MATCH_POINTS, Claim, acc, acc_sd, combined, compare, masks_paragraph,
                                   not_run, same, seeds_caption, threshold, verdict_of, verdict_table,
                                   within_says)
from utils.document import Table

COMMAND = "python earlycrop.py"


def _num(v, fmt):
    return "n/a" if not isinstance(v, float) else fmt.format(v)


def _row(r):
    return [LABELS.get(r["method"], r["method"]), _num(r["sparsity"], "{:.0%}") if r["method"] != "dense" else "-",
            acc_sd(r, "test_acc"), _num(r.get("weight_sparsity"), "{:.1%}"), _num(r.get("node_sparsity"), "{:.1%}"),
            "-" if r.get("prune_epoch") is None else _epoch(r),
            _num(r.get("train_seconds"), "{:.0f}"), _num(r.get("batch_ms"), "{:.1f}"),
            _num(r.get("peak_mem_mb"), "{:.0f}"), _num(r.get("disk_mb"), "{:.2f}"),
            _num(r.get("params"), "{:,.0f}"), _num(r.get("flops"), "{:.3g}"),
            _num(r.get("train_flops_ratio"), "{:.2f}x")]


def _at(rows, method, s):
    return next((r for r in rows if r["method"] == method and abs(r["sparsity"] - s) < 1e-9), None)


def _acc(res, method, s=None):
    """Per-seed test accuracy of `method` at sparsity `s` (the dense row when `s` is None)."""
    def one(rep):
        hit = next((r for r in summary_rows(rep) if r["method"] == method
                    and (s is None or same(r["sparsity"], s))), None)
        return None if hit is None else hit["test_acc"]
    return res.per_seed(one)


def _epoch(row):
    """The prune epoch as text ('4'; several seeds may average to '4.5')."""
    e = row.get("prune_epoch")
    return "?" if e is None else f"{e:g}"


RULES = {"authors": "authors' rule (|d_t − d_{t−1}| < (1 − s)·d_2, d_t = ‖θ_t − θ_1‖/‖θ_1‖)",
         "paper": "paper rule (|Δ_t − Δ_{t−1}| / Δ_1 < 1 − s, Δ_t = ‖θ_t − θ_0‖²)"}


def _pick(info):
    """What one rule did at one sparsity, the learning-rate drop named where it fired just after one."""
    if not info["fired"]:
        return f"epoch {info['prune_epoch']} (never fired: the --prune-by cap)"
    m = info.get("after_milestone")
    if m is not None:
        return (f"epoch {info['prune_epoch']} (fired at the learning-rate drop after epoch {m}, "
                "not as the weights settled)")
    return f"epoch {info['prune_epoch']} (the rule fired)"


def _when(det):
    """The bullets of 'When EarlyCroP pruned': per sparsity, the epoch each rule picks, which
    one chose, or the hand-set --prune-epoch."""
    rules = det.get("rules") or {"paper": {"sparsities": det.get("sparsities", {})}}  # older detection.json
    chose = det.get("detector", "paper")
    override = det.get("prune_epoch_override")
    items = []
    if override is not None:
        items.append(f"every EarlyCroP run pruned at epoch {override}, set by hand with --prune-epoch "
                     "(not where a rule fired); the rules would have picked:")
    for k in sorted(det.get("sparsities", {}), key=float):
        picks = []
        for name in sorted(rules, key=lambda n: n != chose):
            info = (rules[name].get("sparsities") or {}).get(k)
            if info:
                used = " (used)" if name == chose and override is None else ""
                picks.append(f"{RULES.get(name, name)}{used}: {_pick(info)}")
        items.append(f"sparsity {float(k):.0%}: " + "; ".join(picks))
    return items


def section(doc, res):
    _results(doc, res)
    verdict_table(doc, "earlycrop", claims(res))


def _results(doc, res):
    doc.h1("EarlyCroP: pruning by gradient flow, early in training")
    all_rows = res.csv("earlycrop", "summary.csv")
    rows = summary_rows(res)
    det = res.json("earlycrop", "detection.json")
    if not rows:
        doc.p(f"No results yet (results/earlycrop/summary.csv): run {COMMAND}.")
        return
    doc.p("CroP scores each weight by |θ ⊙ Hg| (each channel by the gate derivative of gᵀg) on training "
          "batches; EarlyCroP applies it at the dense epoch where the weights stop moving fast (see below "
          "for the rule), then trains on with the full recipe. Rows measured on one device: batch_ms is the "
          "fastest training step, peak_mem_mb the CUDA peak of those steps (n/a on a CPU), disk_mb the saved "
          "size (compact net, or masked tensors as CSR); train_seconds counts the dense epochs before pruning, "
          "the scoring and every epoch's training and evaluation; train FLOPs is the training's FLOPs over the "
          "dense run's (dense epochs before pruning, the pruned network's after; masked weights count).")
    columns = ["method", "sparsity", "test acc", "weight sp.", "node sp.", "prune epoch", "train s",
               "batch ms", "peak MB", "disk MB", "params", "FLOPs", "train FLOPs"]
    order = {m: i for i, m in enumerate(["dense"] + list(LABELS))}
    ordered = sorted(rows, key=lambda r: (r["method"] != "dense", r["sparsity"], order.get(r["method"], 99)))
    doc.table(Table("earlycrop", "EarlyCroP and baselines: last-epoch test accuracy (%), sparsities, cost, "
                    "size (results/earlycrop/summary.csv)" + seeds_caption(res), columns, [_row(r) for r in ordered]))
    masks_paragraph(doc, ordered, lambda r: f"{r['method']} {r['sparsity']:g}")
    missing = [r for r in all_rows if not isinstance(r.get("test_acc"), float) and r.get("source")]
    if missing:
        doc.bullets([f"{r['method']} at sparsity {r['sparsity']:g}: {r['source']}" for r in missing])
    doc.figure("earlycrop_accuracy")
    if det:
        doc.h2("When EarlyCroP pruned")
        doc.bullets(_when(det))
        doc.figure("earlycrop_detector")

    dense = next((r for r in rows if r["method"] == "dense"), None)
    doc.h2("Answers")
    items = []
    for s in sorted({r["sparsity"] for r in rows if r["method"] != "dense"}):
        for early, init in (("earlycrop_u", "crop_u"), ("earlycrop_s", "crop_s")):
            a, b = _at(rows, early, s), _at(rows, init, s)
            if a and b:
                c = compare(_acc(res, early, s), _acc(res, init, s))
                items.append(f"{s:.0%}: {LABELS[early]} {acc(a['test_acc'])}% vs {LABELS[init]} "
                             f"{acc(b['test_acc'])}%, pruning at epoch {_epoch(a)} instead of at init: {c.says()}")
        for early in ("earlycrop_u", "earlycrop_s"):
            a = _at(rows, early, s)
            kind = "structured" if early == "earlycrop_s" else "unstructured"
            others = [r for r in rows if abs(r["sparsity"] - s) < 1e-9 and r["method"] not in
                      ("earlycrop_u", "earlycrop_s", "dense") and str(r.get("structured")) == str(a and a.get("structured"))]
            if a and others:  # the same kind of pruning: -S against -S, -U against -U
                best = max(others, key=lambda r: r["test_acc"])
                c = compare(_acc(res, early, s), _acc(res, best["method"], s))
                items.append(f"{s:.0%}: {LABELS[early]} against the best other {kind} method there "
                             f"({LABELS.get(best['method'], best['method'])}, {acc(best['test_acc'])}%): {c.says()}")
            if a and dense:
                c = compare(_acc(res, early, s), _acc(res, "dense"))
                flops = (f" ({a['train_flops_ratio']:.2f}x its training FLOPs)"
                         if isinstance(a.get("train_flops_ratio"), float) else "")
                items.append(f"{s:.0%}: {LABELS[early]} costs {a['train_seconds'] / dense['train_seconds']:.2f}x the "
                             f"dense run's training time{flops}; its accuracy against the dense run: {c.says()}")
        a = _at(rows, "earlycrop_s", s)
        if a and dense and isinstance(a.get("params"), float):
            mem = (f", {a['peak_mem_mb'] / dense['peak_mem_mb']:.2f}x its training memory"
                   if isinstance(a.get("peak_mem_mb"), float) and isinstance(dense.get("peak_mem_mb"), float) else "")
            items.append(f"{s:.0%} structured savings: EarlyCroP-S keeps {a['params'] / dense['params']:.1%} of the "
                         f"dense parameters and {a['flops'] / dense['flops']:.1%} of its FLOPs, "
                         f"{a['batch_ms'] / dense['batch_ms']:.2f}x its training-step time"
                         f"{mem}, {a['disk_mb'] / dense['disk_mb']:.2f}x its size on disk")
    doc.bullets(items or [f"Not enough runs to compare yet; run {COMMAND}."])


TABLE = "Rachwan et al. 2022, Table (ResNet18/CIFAR10 at 95% sparsity)"
PAPER = {"earlycrop_u": ("crop_u", 91.1, 87.9), "earlycrop_s": ("crop_s", 91.0, 87.5)}  # that table: early, at init
NAMES = {"earlycrop_u": "EarlyCroP-U", "crop_u": "CroP-U", "earlycrop_s": "EarlyCroP-S", "crop_s": "CroP-S"}


def claims(res):
    """Rachwan et al.'s table, per variant: pruning early beats pruning at initialisation, and
    stays close to the dense network (within MATCH_POINTS here; 91.1/91.0% against 91.5% there),
    at every sparsity this run holds both."""
    rows = summary_rows(res)
    out = []
    for early, (init, early_acc, init_acc) in PAPER.items():
        beats = (f"{NAMES[early]} (pruned early in training) beats {NAMES[init]} (pruned at initialisation): "
                 f"{early_acc:g}% vs {init_acc:g}%")
        close = (f"{NAMES[early]} stays close to the dense network: {early_acc:g}% vs 91.5% (within "
                 f"{MATCH_POINTS:g} point here)")
        sparsities = sorted({r["sparsity"] for r in rows if r["method"] == early})
        if not sparsities:
            out += [not_run(beats, TABLE, COMMAND), not_run(close, TABLE, COMMAND)]
            continue
        parts, verdicts = [], []
        for s in sparsities:
            if _at(rows, init, s):
                c = compare(_acc(res, early, s), _acc(res, init, s))
                parts.append(f"{s:.0%}: {c.says()}")
                verdicts.append(verdict_of(c))
        out.append(Claim(beats, TABLE, "; ".join(parts), combined(verdicts)) if parts else
                   not_run(beats, TABLE, f"{COMMAND} with {init} among the methods"))
        if any(r["method"] == "dense" for r in rows):
            per = [(s, threshold(_acc(res, early, s), _acc(res, "dense"), MATCH_POINTS)) for s in sparsities]
            out.append(Claim(close, TABLE, "; ".join(f"{s:.0%}: vs dense {within_says(c)}" for s, c in per),
                             combined(verdict_of(c) for _, c in per)))
        else:
            out.append(not_run(close, TABLE, f"{COMMAND} with the dense run"))
    return out
