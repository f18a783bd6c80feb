"""Task 4: which Early-Bird ticket epoch is best, is early better than late, and what does the
detector pick? Every comparison pairs the numbers by seed and follows the report's noise rule
(utils/noise.py); the best epoch is the one with the highest mean."""
from utils.analysis.common import (MATCH_POINTS, NOT_REPRODUCED, NOT_TESTABLE, Claim, acc, acc_sd, combined,
                                   compare, listing, masks_paragraph, missing, not_run, pct, seed_values,
                                   seeds_caption, threshold, verdict_of, verdict_table, within_says)
from utils.document import Table


def _retrained(res, ratio, epoch):
    """Per-seed retrained accuracy of the ticket drawn at `epoch` with `ratio` channels pruned."""
    return seed_values(res, lambda rep: rep.early_bird, "retrained_acc", ratio=ratio, ticket_epoch=epoch)


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
            line = [f"{int(r['ticket_epoch'])}", pct(r["ratio"]), acc_sd(r, "dense_acc")]
            line += [acc_sd(r, "dense_epoch_acc")] if has_epoch_acc else []
            line += [acc_sd(r, "pruned_acc"), acc_sd(r, "retrained_acc"), f"{int(r['params']):,}",
                     f"{r['flops'] / 1e6:.1f}M" if isinstance(r.get("flops"), float) else str(r.get("flops"))]
            table_rows.append(line)
        doc.table(Table("early_bird", "Task 4: test accuracy (%) of the fully trained original, of the channel-"
                        "pruned ticket before and after retraining, and the compact network's size" + seeds_caption(res),
                        cols, table_rows))
        doc.p(_retraining(rows))
        masks_paragraph(doc, rows, lambda r: f"epoch {int(r['ticket_epoch'])} ratio {pct(r['ratio'])}")
        doc.figure("early_bird_accuracy")
        doc.figure("early_bird_trajectories")
        doc.h2("Which ticket epoch is best, and is early better than late?")
        items, verdicts = [], []
        for ratio in sorted({r["ratio"] for r in rows}):
            sub = [r for r in rows if r["ratio"] == ratio]
            best = max(sub, key=lambda r: r["retrained_acc"])
            early, late = sub[0], sub[-1]
            c = compare(_retrained(res, ratio, early["ticket_epoch"]), _retrained(res, ratio, late["ticket_epoch"]))
            items.append(f"{pct(ratio)} channels pruned: best ticket epoch {int(best['ticket_epoch'])} "
                         f"({acc(best['retrained_acc'])}%); earliest (epoch {int(early['ticket_epoch'])}) "
                         f"{acc(early['retrained_acc'])}% vs latest (epoch {int(late['ticket_epoch'])}) "
                         f"{acc(late['retrained_acc'])}%; earliest vs latest: "
                         f"{c.says('earliest ahead', 'earliest behind')}.")
            verdicts.append((pct(ratio), c))
        doc.bullets(items)
        best = max(rows, key=lambda r: r["retrained_acc"])
        dense_epochs = (res.dense_summary or {}).get("epochs")
        saved = f", saving {100 * (1 - best['ticket_epoch'] / dense_epochs):.0f}% of the dense training" \
            if dense_epochs else ""
        doc.p(f"Overall best: ticket epoch {int(best['ticket_epoch'])} at {pct(best['ratio'])} channels pruned, "
              f"{acc(best['retrained_acc'])}% after retraining{saved}.")
        if res.multi_seed:
            early_wins = [r for r, c in verdicts if c.up]
            doc.p(f"Early beats late (the earliest ticket called ahead of the latest) at {len(early_wins)} of "
                  f"{len(verdicts)} ratios" + (f": {', '.join(early_wins)}." if early_wins else ".")
                  + " Where it does, pruning early is the better choice, since it also skips most of the dense "
                  "training; where the two are within noise, early still saves that training.")
        else:
            doc.p("Earliest minus latest ticket: " + listing(verdicts) + ". With one seed no ratio is called; "
                  "where early is not worse, pruning early is the better choice, since it also skips most of the "
                  "dense training.")
    detection_section(doc, res, rows)
    verdict_table(doc, "early_bird", claims(res))


def _retraining(rows):
    """Which retraining the table's tickets had (summary.csv's retrain_from, retrain_schedule)."""
    kinds = sorted({(str(r.get("retrain_from") or "ticket"), str(r.get("retrain_schedule") or "full")) for r in rows})
    said = []
    for start, schedule in kinds:
        weights = "the ticket's own weights" if start == "ticket" else "the compact network freshly initialised"
        plan = ("a new full schedule from the initial learning rate (the paper's text)" if schedule == "full" else
                "only the rest of the dense schedule, epochs e+1 … E at the dense run's learning rates "
                "(the authors' released code" + (")" if start == "scratch" else ", but from the ticket's weights)"))
        said.append(f"{weights}, trained for {plan}")
    return "Retraining: " + "; ".join(said) + ". train_flops_ratio prices that schedule."


def _detected(res, key):
    """Per-seed detected epoch (None where the detector never fired) for the ratio `key` of
    detection.json, and the max distance there."""
    def one(rep):
        v = ((rep.detection or {}).get("ratios") or {}).get(key) or {}
        e = v.get("eb_epoch")
        return (None, None) if e is None else (int(e), v["max_distance"][int(e)])
    return res.per_seed(one)


def detection_section(doc, res, rows):
    det = res.detection
    doc.h2("Can the pruning epoch be found automatically?")
    if not det:
        doc.p("No detection results (results/early_bird/detection.json): run python early_bird.py.")
        return
    keys = sorted(det.get("ratios", {}), key=float)
    detected = {k: _detected(res, k) for k in keys}

    def cells(k):
        found = detected[k]
        if all(e is None for e, _ in found):
            return ["none", ""]
        return [", ".join("none" if e is None else str(e) for e, _ in found),
                ", ".join("" if d is None else f"{d:.4f}" for _, d in found)]
    pool = ("every BatchNorm channel (the authors' pool)" if det.get("pool") == "all"
            else "the blocks' inner channels (the ones pruned)")
    doc.table(Table("detection", f"Early-Bird detector: first epoch whose channel mask over {pool} stays within "
                    f"distance {det.get('eps')} of the previous {int(det.get('window', 5)) - 1} masks"
                    + (f" (per seed: {', '.join(map(str, res.seeds))})" if res.multi_seed else ""),
                    ["channels pruned", "detected epoch", "max distance there"],
                    [[pct(float(k))] + cells(k) for k in keys]))
    doc.figure("mask_distance")
    doc.figure("early_bird_detector")
    items = []
    for k in keys:
        found = detected[k]
        if all(e is None for e, _ in found):
            v = det["ratios"][k]
            items.append(f"{pct(float(k))}: the mask never settled below eps = {det.get('eps')} within the "
                         f"{len(v.get('max_distance', [])) - 1} recorded epochs.")
            continue
        sub = [r for r in rows if abs(r["ratio"] - float(k)) < 1e-9]
        epochs = [e for e, _ in found]
        text = f"{pct(float(k))}: the detector picks epoch " + ", ".join("none" if e is None else str(e) for e in epochs)
        text += f" (seeds {', '.join(map(str, res.seeds))})" if res.multi_seed else ""
        if sub:
            best = max(sub, key=lambda r: r["retrained_acc"])
            drawn = sorted({r["ticket_epoch"] for r in sub})

            def nearest(e):
                return None if e is None else min(drawn, key=lambda t: abs(t - e))
            near = [nearest(e) for e in epochs]
            near_acc = [None if t is None else _retrained(res, float(k), t)[i] for i, t in enumerate(near)]
            best_acc = _retrained(res, float(k), best["ticket_epoch"])
            shown = sorted({int(t) for t in near if t is not None})
            text += (f"; the nearest ticket drawn (epoch {', '.join(map(str, shown))}) against the best ticket epoch "
                     f"({int(best['ticket_epoch'])}, {acc(best['retrained_acc'])}%): "
                     f"{compare(near_acc, best_acc).says()}")
        items.append(text + ".")
    doc.bullets(items)


EB = "You et al. 2020"


def claims(res):
    """You et al.'s two claims: an early ticket retrains as well as a late one (within
    MATCH_POINTS, every ratio), and the mask-distance detector picks a ticket that does."""
    early = (f"A ticket drawn early in training retrains about as well as one drawn late, sometimes better "
             f"(within {MATCH_POINTS:g} point here)")
    detect = (f"The mask-distance detector (ε = 0.1 over the last 5 masks) fires early, at a ticket that retrains "
              f"about as well as the best one drawn (within {MATCH_POINTS:g} point here)")
    sources = (f"{EB}, Section 3, Figure 1", f"{EB}, Section 3, Algorithm 1")
    rows = res.early_bird
    if not rows:
        return [not_run(c, s, "python early_bird.py") for c, s in zip((early, detect), sources)]
    parts, verdicts = [], []
    for ratio in sorted({r["ratio"] for r in rows}):
        epochs = sorted({r["ticket_epoch"] for r in rows if r["ratio"] == ratio})
        c = threshold(_retrained(res, ratio, epochs[0]), _retrained(res, ratio, epochs[-1]), MATCH_POINTS)
        parts.append(f"{pct(ratio)}: epoch {int(epochs[0])} vs {int(epochs[-1])}: {within_says(c)}")
        verdicts.append(verdict_of(c))
    out = [Claim(early, sources[0], "; ".join(parts), combined(verdicts))]
    keys = sorted(((res.detection or {}).get("ratios") or {}), key=float)
    if not keys:
        return out + [not_run(detect, sources[1], "python early_bird.py")]
    parts, verdicts = [], []
    for k in keys:
        found = [e for e, _ in _detected(res, k)]
        sub = [r for r in rows if abs(r["ratio"] - float(k)) < 1e-9]
        if all(e is None for e in found) or not sub:
            parts.append(f"{pct(float(k))}: " + ("never fired" if all(e is None for e in found) else "no ticket drawn"))
            verdicts.append(NOT_REPRODUCED if res.multi_seed and all(e is None for e in found) else NOT_TESTABLE)
            continue
        drawn = sorted({r["ticket_epoch"] for r in sub})
        best = max(sub, key=lambda r: r["retrained_acc"])["ticket_epoch"]
        near = [None if e is None else _retrained(res, float(k), min(drawn, key=lambda t: abs(t - e)))[i]
                for i, e in enumerate(found)]
        c = threshold(near, _retrained(res, float(k), best), MATCH_POINTS)
        parts.append(f"{pct(float(k))}: fired at epoch {', '.join('none' if e is None else str(e) for e in found)}; "
                     f"nearest drawn ticket vs the best (epoch {int(best)}): {within_says(c)}")
        verdicts.append(verdict_of(c))
    return out + [Claim(detect, sources[1], "; ".join(parts), combined(verdicts))]
