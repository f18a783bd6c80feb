"""Task 4: which Early-Bird ticket epoch is best, is early better than late, and what does the
detector pick?"""
from utils.analysis.common import acc, missing, pct, signed
from utils.document import Table


def section(doc, res):
    rows = res.early_bird
    doc.h1("Task 4: Early-Bird tickets")
    if not rows:
        missing(doc, "results/early_bird/summary.csv", "python early_bird.py")
    else:
        has_epoch_acc = any(r.get("dense_epoch_acc") is not None for r in rows)
        cols = ["ticket epoch", "channels pruned", "original"]
        cols += ["dense at ticket epoch"] if has_epoch_acc else []
        cols += ["pruned", "retrained", "params", "FLOPs"]
        table_rows = []
        for r in rows:
            line = [f"{int(r['ticket_epoch'])}", pct(r["ratio"]), acc(r["dense_acc"])]
            line += [acc(r.get("dense_epoch_acc"))] if has_epoch_acc else []
            line += [acc(r["pruned_acc"]), acc(r["retrained_acc"]), f"{int(r['params']):,}",
                     f"{r['flops'] / 1e6:.1f}M" if isinstance(r.get("flops"), float) else str(r.get("flops"))]
            table_rows.append(line)
        doc.table(Table("early_bird", "Task 4: test accuracy (%) of the fully trained original, of the channel-"
                        "pruned ticket before and after retraining, and the compact network's size",
                        cols, table_rows))
        doc.figure("early_bird_accuracy")
        doc.figure("early_bird_trajectories")
        doc.h2("Which ticket epoch is best, and is early better than late?")
        items, verdicts = [], []
        for ratio in sorted({r["ratio"] for r in rows}):
            sub = [r for r in rows if r["ratio"] == ratio]
            best = max(sub, key=lambda r: r["retrained_acc"])
            early, late = sub[0], sub[-1]
            items.append(f"{pct(ratio)} channels pruned: best ticket epoch {int(best['ticket_epoch'])} "
                         f"({acc(best['retrained_acc'])}%); earliest (epoch {int(early['ticket_epoch'])}) "
                         f"{acc(early['retrained_acc'])}% vs latest (epoch {int(late['ticket_epoch'])}) "
                         f"{acc(late['retrained_acc'])}%, so the earliest ticket is "
                         f"{abs(early['retrained_acc'] - late['retrained_acc']):.2f} points "
                         f"{'ahead' if early['retrained_acc'] >= late['retrained_acc'] else 'behind'}.")
            verdicts.append((ratio, early["retrained_acc"] >= late["retrained_acc"]))
        doc.bullets(items)
        best = max(rows, key=lambda r: r["retrained_acc"])
        dense_epochs = (res.dense_summary or {}).get("epochs")
        saved = f", saving {100 * (1 - best['ticket_epoch'] / dense_epochs):.0f}% of the dense training" \
            if dense_epochs else ""
        doc.p(f"Overall best: ticket epoch {int(best['ticket_epoch'])} at {pct(best['ratio'])} channels pruned, "
              f"{acc(best['retrained_acc'])}% after retraining{saved}.")
        early_wins = [pct(r) for r, won in verdicts if won]
        doc.p(f"Early beats late (the earliest ticket retrains at least as well as the latest) at "
              f"{len(early_wins)} of {len(verdicts)} ratios" + (f": {', '.join(early_wins)}." if early_wins else ".")
              + " Where it does, pruning early is the better choice, since it also skips most of the dense "
              "training.")
    detection_section(doc, res, rows)


def detection_section(doc, res, rows):
    det = res.detection
    doc.h2("Can the pruning epoch be found automatically?")
    if not det:
        doc.p("No detection results (results/early_bird/detection.json): run python early_bird.py.")
        return
    doc.table(Table("detection", f"Early-Bird detector: first epoch whose channel mask stays within distance "
                    f"{det.get('eps')} of the previous {det.get('window', 5) - 1} masks",
                    ["channels pruned", "detected epoch", "max distance there"],
                    [[pct(float(k)), "none" if v.get("eb_epoch") is None else str(v["eb_epoch"]),
                      "" if v.get("eb_epoch") is None else f"{v['max_distance'][v['eb_epoch']]:.4f}"]
                     for k, v in sorted(det.get("ratios", {}).items(), key=lambda kv: float(kv[0]))]))
    doc.figure("mask_distance")
    doc.figure("early_bird_detector")
    items = []
    for k, v in sorted(det.get("ratios", {}).items(), key=lambda kv: float(kv[0])):
        e = v.get("eb_epoch")
        if e is None:
            items.append(f"{pct(float(k))}: the mask never settled below eps = {det.get('eps')} within the "
                         f"{len(v.get('max_distance', [])) - 1} recorded epochs.")
            continue
        sub = [r for r in rows if abs(r["ratio"] - float(k)) < 1e-9]
        text = f"{pct(float(k))}: the detector picks epoch {e}"
        if sub:
            near = min(sub, key=lambda r: abs(r["ticket_epoch"] - e))
            best = max(sub, key=lambda r: r["retrained_acc"])
            text += (f"; the nearest ticket drawn (epoch {int(near['ticket_epoch'])}) retrains to "
                     f"{acc(near['retrained_acc'])}%, {signed(near['retrained_acc'] - best['retrained_acc'])} "
                     f"points from the best ticket epoch ({int(best['ticket_epoch'])})")
        items.append(text + ".")
    doc.bullets(items)
