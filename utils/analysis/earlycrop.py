"""EarlyCroP's report section: the paper's table and the answers, computed from
results/earlycrop/{summary.csv,detection.json} when the report is made. Every accuracy
comparison pairs the numbers by seed and follows the report's noise rule (utils/noise.py)."""
from utils.plots.earlycrop import LABELS, summary_rows
from utils.analysis.common import acc_sd, acc, compare, masks_paragraph, same, seeds_caption
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
            _num(r.get("params"), "{:,.0f}"), _num(r.get("flops"), "{:.3g}")]


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


def section(doc, res):
    doc.h1("EarlyCroP: pruning by gradient flow, early in training")
    all_rows = res.csv("earlycrop", "summary.csv")
    rows = summary_rows(res)
    det = res.json("earlycrop", "detection.json")
    if not rows:
        doc.p(f"No results yet (results/earlycrop/summary.csv): run {COMMAND}.")
        return
    doc.p("CroP scores each weight by |θ ⊙ Hg| (each channel by the gate derivative of gᵀg) on training "
          "batches; EarlyCroP applies it at the dense epoch where ‖θ_t − θ_0‖² stops moving fast, then "
          "trains on with the full recipe. Rows measured on one device: batch_ms is the fastest training "
          "step, peak_mem_mb the CUDA peak of those steps (n/a on a CPU), disk_mb the saved size "
          "(compact net, or masked tensors as CSR), train_seconds includes the dense epochs before pruning.")
    columns = ["method", "sparsity", "test acc", "weight sp.", "node sp.", "prune epoch", "train s",
               "batch ms", "peak MB", "disk MB", "params", "FLOPs"]
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
        doc.bullets([f"sparsity {float(k):.0%}: threshold {v['threshold']:.3g}, prune epoch "
                     f"{det.get('prune_epoch_override') or v['prune_epoch']} "
                     f"({'the rule fired' if v['fired'] else 'the rule never fired: the --prune-by cap'})"
                     for k, v in sorted(det.get("sparsities", {}).items(), key=lambda kv: float(kv[0]))])
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
                items.append(f"{s:.0%}: {LABELS[early]} costs {a['train_seconds'] / dense['train_seconds']:.2f}x the "
                             f"dense run's training time; its accuracy against the dense run: {c.says()}")
        a = _at(rows, "earlycrop_s", s)
        if a and dense and isinstance(a.get("params"), float):
            mem = (f", {a['peak_mem_mb'] / dense['peak_mem_mb']:.2f}x its training memory"
                   if isinstance(a.get("peak_mem_mb"), float) and isinstance(dense.get("peak_mem_mb"), float) else "")
            items.append(f"{s:.0%} structured savings: EarlyCroP-S keeps {a['params'] / dense['params']:.1%} of the "
                         f"dense parameters and {a['flops'] / dense['flops']:.1%} of its FLOPs, "
                         f"{a['batch_ms'] / dense['batch_ms']:.2f}x its training-step time"
                         f"{mem}, {a['disk_mb'] / dense['disk_mb']:.2f}x its size on disk")
    doc.bullets(items or [f"Not enough runs to compare yet; run {COMMAND}."])
