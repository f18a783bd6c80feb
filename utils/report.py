"""The report: tables, analysis numbers and set-up read from results/, laid out as blocks that
render to one PDF (matplotlib's PdfPages, no extra dependency) and to a Markdown twin with the
same text, plus the code zip.

Every number in the report is computed here from the CSV/JSON files; none is typed in.
"""
import io
import os
import platform
import re
import subprocess
import textwrap
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

from utils.io import _atomic_write, save_text  # noqa: E402
from utils.plots import FIGURES, Results, build_figure, pct, read_csv  # noqa: E402

METHOD_ORDER = ["oneshot", "imp", "reinit", "random"]
METHOD_NAMES = {"oneshot": "one-shot ticket", "imp": "IMP ticket", "reinit": "re-initialised (control)",
                "random": "random mask (control)"}
# How far below the dense accuracy still counts as "matching" it (a ticket, a retrained net).
MATCH_POINTS = 1.0


def acc(v):
    return "n/a" if v is None else f"{v:.2f}"


def signed(v):
    return "n/a" if v is None else f"{v:+.2f}"


# ---------------------------------------------------------------------------------------------
# The document: a list of blocks
# ---------------------------------------------------------------------------------------------

@dataclass
class Table:
    name: str
    caption: str
    columns: list
    rows: list  # lists of already-formatted strings


@dataclass
class Doc:
    blocks: list = field(default_factory=list)

    def h1(self, text):
        self.blocks.append(("h1", text))

    def h2(self, text):
        self.blocks.append(("h2", text))

    def h3(self, text):
        self.blocks.append(("h3", text))

    def p(self, text):
        self.blocks.append(("p", text))

    def bullets(self, items):
        if items:
            self.blocks.append(("bullets", list(items)))

    def table(self, table):
        self.blocks.append(("table", table))

    def figure(self, name):
        self.blocks.append(("figure", name))

    def page_break(self):
        self.blocks.append(("page", None))

    @property
    def tables(self):
        return {b[1].name: b[1] for b in self.blocks if b[0] == "table"}


# ---------------------------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------------------------

RECIPE_COLUMNS = ["run", "epochs", "batch", "lr", "momentum", "weight decay", "milestones",
                  "train images", "test images"]


def _recipe_row(name, cfg):
    def images(n):
        return "all" if not n else f"{int(n):,}"
    return [name, str(cfg.get("epochs", "?")), str(cfg.get("batch_size", "?")), f"{cfg.get('lr', '?')}",
            f"{cfg.get('momentum', '?')}", f"{cfg.get('weight_decay', '?')}",
            " ".join(str(m) for m in cfg.get("milestones", [])) or "none",
            images(cfg.get("train_subset")), images(cfg.get("test_subset"))]


TASKS = [("dense", "Step 1: dense training"), ("magnitude", "Task 2: magnitude retraining"),
         ("lottery", "Task 3: ticket training"), ("early_bird", "Task 4: Early-Bird retraining"),
         ("robustness", "Bonus: robustness")]


def trajectory_seconds(res, task):
    """Wall-clock seconds of every epoch row of every trajectory under results/<task>/."""
    paths = res.path(task).rglob("trajectory.csv") if res.path(task).is_dir() else []
    return sum(row.get("seconds") or 0.0 for p in paths for row in read_csv(p))


def hms(seconds):
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def setup_section(doc, res):
    doc.h1("Experimental set-up")
    dense = res.dense_summary
    if dense:
        cfg = dense.get("config", {})
        doc.p(f"Network: {cfg.get('arch', 'resnet20')} (shortcut option {cfg.get('shortcut', '?')}), "
              f"{dense.get('params', 0):,} parameters, trained from a seeded initialisation (seed "
              f"{cfg.get('seed', '?')}) with SGD, a step learning-rate schedule (x0.1 after each "
              f"milestone), random crop (padding 4) and horizontal flip; the network-slimming L1 "
              f"penalty on BatchNorm scales was {cfg.get('bn_l1', 0)}. Accuracies are on the CIFAR-10 "
              f"test images used ({'all' if not cfg.get('test_subset') else cfg['test_subset']}).")
    else:
        doc.p("No dense run found (results/dense/summary.json): run python train_dense.py.")
    rows, devices = [], set()
    for task, name in TASKS:
        runs = res.runs(task)
        for folder, summary in runs.items():
            if summary.get("device"):
                devices.add(summary["device"])
        if runs:
            first = next(iter(runs.values()))
            rows.append(_recipe_row(f"{name} ({len(runs)} run{'s' * (len(runs) != 1)})", first.get("config", {})))
    if rows:
        doc.table(Table("recipes", "Training recipes, read from each task's summary.json (first run shown)",
                        RECIPE_COLUMNS, rows))
    times = [(name, trajectory_seconds(res, task)) for task, name in TASKS]
    times = [(n, s) for n, s in times if s > 0]
    if times:
        rows = [[n, hms(s), f"{s:.0f}"] for n, s in times]
        total = sum(s for _, s in times)
        rows.append(["total", hms(total), f"{total:.0f}"])
        doc.table(Table("time", "Time taken: the sum of the trajectories' per-epoch seconds "
                        "(training and evaluation)", ["step", "time", "seconds"], rows))
    host = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores"
    doc.p(f"Hardware: the runs report device(s) {', '.join(sorted(devices)) or 'unknown'}; this report "
          f"was assembled on {host}.")


# ---------------------------------------------------------------------------------------------
# Task 2
# ---------------------------------------------------------------------------------------------

def magnitude_section(doc, res):
    rows = res.magnitude
    doc.h1("Task 2: magnitude pruning and retraining")
    if not rows:
        doc.p("No results yet (results/magnitude/summary.csv): run python prune_magnitude.py.")
        return
    doc.table(Table("magnitude", "Task 2: ResNet-20 test accuracy (%) before pruning, after pruning "
                    "(not retrained) and after retraining",
                    ["sparsity", "original", "pruned", "retrained", "recovered by retraining",
                     "retrained - original"],
                    [[pct(r["sparsity"]), acc(r["dense_acc"]), acc(r["pruned_acc"]), acc(r["retrained_acc"]),
                      signed(r["retrained_acc"] - r["pruned_acc"]), signed(r["retrained_acc"] - r["dense_acc"])]
                     for r in rows]))
    for spec in ("magnitude_trajectories",):
        doc.figure(spec)
    doc.h2("Is retraining necessary, and how much does it recover?")
    drops = [(r["sparsity"], r["dense_acc"] - r["pruned_acc"]) for r in rows]
    needed = [pct(s) for s, d in drops if d > MATCH_POINTS]
    items = [f"At {pct(r['sparsity'])} sparsity pruning alone costs {r['dense_acc'] - r['pruned_acc']:.2f} "
             f"points ({acc(r['dense_acc'])}% -> {acc(r['pruned_acc'])}%); retraining recovers "
             f"{r['retrained_acc'] - r['pruned_acc']:.2f} points, ending "
             f"{abs(r['retrained_acc'] - r['dense_acc']):.2f} points "
             f"{'above' if r['retrained_acc'] >= r['dense_acc'] else 'below'} the original "
             f"({acc(r['retrained_acc'])}%)." for r in rows]
    doc.bullets(items)
    if needed:
        doc.p(f"Retraining is necessary at {', '.join(needed)} sparsity, where pruning without it loses "
              f"more than {MATCH_POINTS:g} point of accuracy.")
    else:
        doc.p(f"On these results pruning alone never loses more than {MATCH_POINTS:g} point, so retraining "
              "is not needed at these sparsities.")
    gains = [r for r in rows if r["retrained_acc"] > r["dense_acc"]]
    if gains:
        doc.p("Pruning plus retraining beats the original network at "
              + ", ".join(f"{pct(r['sparsity'])} ({signed(r['retrained_acc'] - r['dense_acc'])} points)"
                          for r in gains) + ".")
    else:
        best = max(rows, key=lambda r: r["retrained_acc"] - r["dense_acc"])
        doc.p(f"Pruning brings no accuracy improvement over the original here: the closest is "
              f"{pct(best['sparsity'])} sparsity at {signed(best['retrained_acc'] - best['dense_acc'])} points.")


# ---------------------------------------------------------------------------------------------
# Task 3
# ---------------------------------------------------------------------------------------------

def _method_rows(rows, method):
    return sorted((r for r in rows if r.get("method") == method), key=lambda r: (r["sparsity"], r.get("round") or 0))


def _at(rows, method, sparsity):
    """The retrained accuracy of `method` at `sparsity` (the last round landing there), or None."""
    hits = [r for r in _method_rows(rows, method) if abs(r["sparsity"] - sparsity) < 1e-9]
    return hits[-1]["retrained_acc"] if hits else None


def lottery_section(doc, res):
    rows = res.lottery
    doc.h1("Task 3: lottery tickets (one-shot and iterative magnitude pruning)")
    if not rows:
        doc.p("No results yet (results/lottery/summary.csv): run python lottery_imp.py.")
        return
    methods = [m for m in METHOD_ORDER if any(r.get("method") == m for r in rows)]
    methods += sorted({r.get("method") for r in rows} - set(methods))
    table_rows = []
    for m in methods:
        for r in _method_rows(rows, m):
            rnd = r.get("round")
            table_rows.append([METHOD_NAMES.get(m, m), pct(r["sparsity"]), "" if rnd is None else f"{int(rnd)}",
                               acc(r["dense_acc"]), acc(r["ticket_acc"]), acc(r["retrained_acc"])])
    doc.table(Table("lottery", "Task 3: test accuracy (%) of the original network, of the ticket (mask on the "
                    "rewound weights, before training) and of the trained ticket",
                    ["method", "sparsity", "round", "original", "ticket (untrained)", "retrained"], table_rows))
    for m in methods:
        doc.figure(f"lottery_{m}_trajectories" if m in ("oneshot", "imp") else f"lottery_control_{m}_trajectories")

    doc.h2("Is there a lottery-ticket effect?")
    dense_acc = rows[0].get("dense_acc")
    targets = sorted({r["sparsity"] for r in rows if r.get("method") == "oneshot"}) or \
        sorted({r["sparsity"] for r in rows})
    items = []
    for s in targets:
        parts = []
        for m in ("oneshot", "imp"):
            a = _at(rows, m, s)
            if a is not None:
                parts.append(f"{METHOD_NAMES[m]} {acc(a)}% ({signed(a - dense_acc)} vs original)")
        for m in ("reinit", "random"):
            a = _at(rows, m, s)
            if a is not None:
                best = max(x for x in (_at(rows, "oneshot", s), _at(rows, "imp", s)) if x is not None) \
                    if any(x is not None for x in (_at(rows, "oneshot", s), _at(rows, "imp", s))) else None
                parts.append(f"{METHOD_NAMES[m]} {acc(a)}%" + (f" (best ticket {signed(best - a)} ahead)"
                                                             if best is not None else ""))
        if parts:
            items.append(f"{pct(s)} sparsity: " + "; ".join(parts) + ".")
    doc.bullets(items)
    matched = [s for s in targets if any((_at(rows, m, s) or -1e9) >= dense_acc - MATCH_POINTS
                                         for m in ("oneshot", "imp"))]
    doc.p(f"A ticket trained from the rewound weights reaches within {MATCH_POINTS:g} point of the original "
          f"({acc(dense_acc)}%) at " + (", ".join(pct(s) for s in matched) if matched else "no sparsity tested")
          + ".")
    controls = [m for m in ("reinit", "random") if m in methods]
    if controls:
        wins = []
        for s in targets:
            tickets = [x for x in (_at(rows, "oneshot", s), _at(rows, "imp", s)) if x is not None]
            ctrl = [x for x in (_at(rows, m, s) for m in controls) if x is not None]
            if tickets and ctrl:
                wins.append((s, max(tickets) - max(ctrl)))
        beat = [f"{pct(s)} ({signed(d)} points)" for s, d in wins if d > 0]
        doc.p("Against the controls (same sparsity, " + " and ".join(METHOD_NAMES[m] for m in controls) + "), "
              "the better ticket is ahead at " + (", ".join(beat) if beat else "no sparsity") + ". "
              + ("A lottery-ticket effect is seen where the ticket both matches the original and beats the "
                 "controls." if beat else "So these results show no lottery-ticket effect over the controls."))
    else:
        doc.p("No reinit/random controls were run (python lottery_imp.py --controls reinit random), so the "
              "effect can only be judged against the original accuracy.")

    doc.h2("Task 2 versus Task 3")
    mag = {r["sparsity"]: r["retrained_acc"] for r in res.magnitude}
    sparsities = sorted(set(targets) | set(mag))
    cols = ["sparsity", "magnitude retrained (Task 2)"] + [METHOD_NAMES[m] for m in methods]
    cmp_rows = [[pct(s), acc(mag.get(s))] + [acc(_at(rows, m, s)) for m in methods] for s in sparsities]
    doc.table(Table("task2_vs_task3", "Retrained test accuracy (%): weights kept (Task 2) vs rewound (Task 3)",
                    cols, cmp_rows))
    items = []
    for s in sparsities:
        if s in mag:
            for m in ("oneshot", "imp"):
                a = _at(rows, m, s)
                if a is not None:
                    items.append(f"{pct(s)}: {METHOD_NAMES[m]} {signed(a - mag[s])} points vs magnitude retraining.")
    doc.bullets(items)
    cfg2 = next(iter(res.runs("magnitude").values()), {}).get("config", {})
    cfg3 = next(iter(res.runs("lottery").values()), {}).get("config", {})
    if cfg2 and cfg3:
        doc.p(f"Task 2 keeps the trained weights and fine-tunes for {cfg2.get('epochs')} epochs at lr "
              f"{cfg2.get('lr')}; Task 3 resets the surviving weights to the rewind point and trains "
              f"{cfg3.get('epochs')} epochs at lr {cfg3.get('lr')}, once per one-shot target and once per IMP "
              f"round.")


# ---------------------------------------------------------------------------------------------
# Task 4
# ---------------------------------------------------------------------------------------------

def early_bird_section(doc, res):
    rows = res.early_bird
    doc.h1("Task 4: Early-Bird tickets")
    if not rows:
        doc.p("No results yet (results/early_bird/summary.csv): run python early_bird.py.")
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


# ---------------------------------------------------------------------------------------------
# Bonus
# ---------------------------------------------------------------------------------------------

def robustness_section(doc, res):
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


# ---------------------------------------------------------------------------------------------
# Task 1: the paper summaries
# ---------------------------------------------------------------------------------------------

def _plain(text):
    """Markdown inline markup -> plain text (links keep their words)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"(\*\*|__|\*|`)", "", text)
    return text


def papers_section(doc, papers_path):
    papers_path = Path(papers_path)
    if not papers_path.is_file():
        doc.h1("Task 1: paper summaries")
        doc.p(f"The paper summaries are missing: {papers_path} was not found.")
        return
    para, bullets = [], []

    def flush():
        if para:
            doc.p(_plain(" ".join(para)))
            para.clear()
        if bullets:
            doc.bullets([_plain(b) for b in bullets])
            bullets.clear()

    for line in papers_path.read_text().splitlines():
        s = line.strip()
        m = re.match(r"^(#{1,6})\s+(.*)", s)
        if m:
            flush()
            (doc.h1, doc.h2, doc.h3)[min(len(m.group(1)), 3) - 1](_plain(m.group(2)))
        elif re.match(r"^([-*+]|\d+\.)\s+", s):
            if para:
                flush()
            bullets.append(re.sub(r"^([-*+]|\d+\.)\s+", "", s))
        elif not s:
            flush()
        elif bullets and line.startswith((" ", "\t")):
            bullets[-1] += " " + s  # a wrapped bullet continues
        else:
            if bullets:
                flush()
            para.append(s)
    flush()


# ---------------------------------------------------------------------------------------------
# The whole report
# ---------------------------------------------------------------------------------------------

def build_doc(res, papers_path):
    doc = Doc()
    dense = res.dense_summary
    doc.h1("Drawing Early-Bird tickets: pruning ResNet-20 on CIFAR-10")
    doc.p("Every table and number below is computed from the files in the results folder when this "
          "report is made (python make_report.py); the figures are the ones plot_results.py writes.")
    if dense:
        doc.p(f"Original (dense) ResNet-20: {acc(dense['test_acc'])}% test accuracy after {dense['epochs']} "
              f"epochs ({dense.get('params', 0):,} parameters).")
    setup_section(doc, res)
    doc.h2("Dense training trajectory (Step 1 of every task)")
    doc.figure("dense_trajectory")
    doc.page_break()
    papers_section(doc, papers_path)
    doc.page_break()
    magnitude_section(doc, res)
    doc.page_break()
    lottery_section(doc, res)
    doc.figure("accuracy_vs_sparsity")
    doc.page_break()
    early_bird_section(doc, res)
    doc.page_break()
    robustness_section(doc, res)
    return doc


# ---- Markdown twin -------------------------------------------------------------------------

def to_markdown(doc, skipped):
    out = []
    for kind, x in doc.blocks:
        if kind == "h1":
            out.append(f"# {x}\n")
        elif kind == "h2":
            out.append(f"## {x}\n")
        elif kind == "h3":
            out.append(f"### {x}\n")
        elif kind == "p":
            out.append(f"{x}\n")
        elif kind == "bullets":
            out.append("\n".join(f"- {b}" for b in x) + "\n")
        elif kind == "table":
            out.append(f"Table ({x.name}): {x.caption}\n")
            out.append("| " + " | ".join(x.columns) + " |")
            out.append("|" + "---|" * len(x.columns))
            out.extend("| " + " | ".join(r) + " |" for r in x.rows)
            out.append("")
        elif kind == "figure":
            out.append(f"Figure: {skipped[x]}\n" if x in skipped else f"Figure: plots/{x}.png\n")
    return "\n".join(out)


# ---- PDF -----------------------------------------------------------------------------------

PAGE_W, PAGE_H, MARGIN = 8.27, 11.69, 0.75  # A4, inches
STYLES = {"h1": (15, "bold", "sans-serif"), "h2": (12, "bold", "sans-serif"), "h3": (10.5, "bold", "sans-serif"),
          "p": (9.5, "normal", "sans-serif"), "bullets": (9.5, "normal", "sans-serif"),
          "table": (7.5, "normal", "monospace"), "caption": (8.5, "italic", "sans-serif")}


class PdfWriter:
    """Lays text blocks down A4 pages top to bottom; figures get pages of their own."""

    def __init__(self, pdf):
        self.pdf, self.fig, self.y, self.pages = pdf, None, 0.0, 0

    def _new_page(self):
        self.flush()
        self.fig = plt.figure(figsize=(PAGE_W, PAGE_H))
        self.y = PAGE_H - MARGIN

    def flush(self):
        if self.fig is not None:
            self.fig.text(0.5, 0.3 / PAGE_H, str(self.pages + 1), ha="center", fontsize=8, color="gray")
            self.pdf.savefig(self.fig)
            plt.close(self.fig)
            self.pages += 1
            self.fig = None

    def lines(self, lines, style, indent=0.0, gap_after=0.08):
        size, weight, family = STYLES[style]
        height = size * 1.35 / 72
        for line in lines:
            if self.fig is None or self.y - height < MARGIN:
                self._new_page()
            self.fig.text((MARGIN + indent) / PAGE_W, self.y / PAGE_H, line, fontsize=size,
                          weight=weight if weight != "italic" else "normal",
                          style="italic" if weight == "italic" else "normal", family=family, va="top")
            self.y -= height
        self.y -= gap_after

    def text(self, text, style, indent=0.0, width=None):
        size = STYLES[style][0]
        # characters per line from the text width (average glyph ~0.5 em)
        width = width or int((PAGE_W - 2 * MARGIN - indent) * 72 / (size * 0.52))
        self.lines(textwrap.wrap(text, width) or [""], style, indent)

    def table(self, table):
        if self.fig is not None and self.y - (len(table.rows) + 4) * 7.5 * 1.35 / 72 < MARGIN \
                and len(table.rows) < 40:
            self._new_page()  # keep a table on one page when it fits
        self.text(f"Table: {table.caption}", "caption")
        widths = [max(len(c), *(len(r[i]) for r in table.rows)) if table.rows else len(c)
                  for i, c in enumerate(table.columns)]
        fmt = "  ".join(f"{{:>{w}}}" for w in widths)
        rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
        self.lines([fmt.format(*table.columns), rule] + [fmt.format(*r) for r in table.rows], "table",
                   gap_after=0.15)

    def figure(self, fig):
        """The figure as a page-wide picture below the text (a new page when it does not fit)."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=170, bbox_inches="tight")
        buf.seek(0)
        image = plt.imread(buf)
        width = PAGE_W - 2 * MARGIN
        height = min(width * image.shape[0] / image.shape[1], PAGE_H - 2 * MARGIN)
        if self.fig is None or self.y - height < MARGIN:
            self._new_page()
        ax = self.fig.add_axes([MARGIN / PAGE_W, (self.y - height) / PAGE_H, width / PAGE_W, height / PAGE_H])
        ax.imshow(image, interpolation="lanczos")
        ax.set_axis_off()
        self.y -= height + 0.2


def write_pdf(doc, res, file):
    """Render `doc` into `file` (a binary file object); return (pages, {figure: skip line})."""
    skipped = {}
    specs = {s.name: s for s in FIGURES}
    with PdfPages(file, metadata={"Title": "Pruning ResNet-20: lottery and Early-Bird tickets"}) as pdf:
        w = PdfWriter(pdf)
        for kind, x in doc.blocks:
            if kind == "h1":
                if w.fig is not None and w.y < PAGE_H / 3:
                    w._new_page()
                w.y -= 0.1
                w.text(x, "h1")
            elif kind in ("h2", "h3"):
                w.y -= 0.05
                w.text(x, kind)
            elif kind == "p":
                w.text(x, "p")
            elif kind == "bullets":
                for b in x:
                    size = STYLES["bullets"][0]
                    width = int((PAGE_W - 2 * MARGIN - 0.25) * 72 / (size * 0.52))
                    wrapped = textwrap.wrap(b, width) or [""]
                    w.lines(["\u2022 " + wrapped[0]] + ["   " + ln for ln in wrapped[1:]], "bullets", 0.1, 0.02)
                w.y -= 0.06
            elif kind == "table":
                w.table(x)
            elif kind == "figure":
                fig, skip = build_figure(specs[x], res)
                if skip:
                    skipped[x] = skip
                    w.text(f"Figure {x} {skip}", "caption")
                else:
                    w.figure(fig)
                    plt.close(fig)
            elif kind == "page":
                w.flush()
        w.flush()
        pages = w.pages
    return pages, skipped


def write_report(results_dir, papers_path, pdf_path, md_path):
    """Build the report from `results_dir`; write the PDF and its Markdown twin atomically."""
    res = Results(Path(results_dir))
    doc = build_doc(res, papers_path)
    box = {}

    def render(f):
        box["pages"], box["skipped"] = write_pdf(doc, res, f)
    _atomic_write(pdf_path, render)
    save_text(to_markdown(doc, box["skipped"]), md_path)
    return doc, box["pages"], box["skipped"]


# ---------------------------------------------------------------------------------------------
# The code zip
# ---------------------------------------------------------------------------------------------

EXCLUDED_DIRS = ("data", "checkpoints", "results", "plots", ".git", "__pycache__", ".venv", "venv", "env",
                 ".pytest_cache")
EXCLUDED_SUFFIXES = (".pt", ".pth", ".ckpt", ".npz", ".npy", ".tar", ".gz", ".zip", ".pdf", ".png", ".pyc")
SOURCE_PATTERNS = ("*.py", "*.md", "*.txt", "*.ini", "*.cfg", "*.toml", "*.yml", "*.yaml", "*.json", "*.csv",
                   "*.sh", ".gitignore", ".ci/*")


def source_files(repo):
    """Tracked files (git ls-files) or, outside git, files matching SOURCE_PATTERNS; never data,
    checkpoints, results or binaries."""
    repo = Path(repo)
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True)
        names = [n for n in out.stdout.decode().split("\0") if n]
        in_git = True
    except (OSError, subprocess.CalledProcessError):
        in_git = False
    if not in_git:
        names = sorted({p.relative_to(repo).as_posix() for pat in SOURCE_PATTERNS for p in repo.rglob(pat)
                        if p.is_file()})

    def keep(name):
        parts = name.split("/")
        if parts[0] in EXCLUDED_DIRS or any(p in ("__pycache__", ".git") for p in parts):
            return False
        return not name.endswith(EXCLUDED_SUFFIXES) and (repo / name).is_file()
    return sorted(n for n in names if keep(n))


def write_code_zip(repo, zip_path):
    """Zip the source files (paths relative to the repo root); return the member names."""
    repo = Path(repo).resolve()
    names = source_files(repo)

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            for n in names:
                info = zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0))  # same code, same zip
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = ((repo / n).stat().st_mode & 0o777 | 0o100000) << 16
                z.writestr(info, (repo / n).read_bytes())
    _atomic_write(zip_path, write)
    return names
