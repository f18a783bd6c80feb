"""Report section of the three-regime phase model (three_regime.py), from its summary.csv and
regimes.json only: the grid table, the best temperature per density, and whether heating (fewer
dense epochs, or a smaller dense batch) helps at low density but hurts at high density. Every
comparison pairs the numbers by seed and follows the report's noise rule (utils/noise.py)."""
from utils.analysis.common import compare, masks_paragraph, seed_values, seeds_caption
from utils.plots import pct
from utils.document import Table
from utils.three_regime import AXES, REGIMES

HEAT = {"epochs": "fewer dense epochs", "batch-size": "a smaller dense batch"}
UNIT = {"epochs": "epochs", "batch-size": "batch"}


def _f(v, digits=2):
    return "n/a" if v is None else f"{v:.{digits}f}"


def error(row):
    return 100.0 - row["retrained_acc"]


def best_per_density(rows):
    """{density: row with the lowest test error}; ties go to the hotter (smaller) temperature."""
    best = {}
    for r in sorted(rows, key=lambda r: (r["density"], r["temperature"])):
        if r["density"] not in best or error(r) < error(best[r["density"]]):
            best[r["density"]] = r
    return best


def heating_effect(rows):
    """{density: test error at the coldest minus at the hottest temperature} (points; > 0: the
    hottest temperature is better, heating helps)."""
    out = {}
    for d in sorted({r["density"] for r in rows}):
        cells = sorted((r for r in rows if r["density"] == d), key=lambda r: r["temperature"])
        if len(cells) >= 2:
            out[d] = error(cells[-1]) - error(cells[0])
    return out


def _retrained(res, axis, temperature, density):
    """Per-seed retrained accuracy (mean over copies) of one grid cell."""
    return seed_values(res, lambda rep: rep.csv("three_regime", axis, "summary.csv"), "retrained_acc",
                       temperature=temperature, density=density)


def section(doc, res):
    doc.h1("Three-regime model of pruning: temperature x load")
    doc.p("Zhou et al. (ICML 2023): each cell is the dense network at a temperature, every conv layer "
          "pruned by magnitude to a density and retrained as copies that differ only in data order; "
          "mc (linear mode connectivity, negative = a barrier) and CKA between the copies class it as "
          "Regime I (poorly connected), II-A (connected, dissimilar) or II-B (connected, similar).")
    for axis in AXES:
        rows = res.csv("three_regime", axis, "summary.csv")
        command = "python three_regime.py" + ("" if axis == "epochs" else f" --axis {axis}")
        if not rows:
            doc.p(f"No results yet for temperature = {axis} (results/three_regime/{axis}/summary.csv): "
                  f"run {command}.")
            continue
        thresholds = res.json("three_regime", axis, "regimes.json") or {}
        rows = sorted(rows, key=lambda r: (r["temperature"], r["density"]))
        doc.h2(f"Temperature = {axis}")
        doc.table(Table(
            f"three_regime_{axis}",
            f"Three-regime grid ({axis}): test accuracy (%) of the dense net at that temperature, pruned "
            "(not retrained) and retrained (mean ± sd over copies); mc, barrier, cka (means over pairs)"
            + seeds_caption(res).replace("mean ± sd", "each cell the mean"),
            [UNIT[axis], "density", "dense", "pruned", "retrained", "mc", "barrier", "cka", "regime"],
            [[f"{r['temperature']:g}", pct(r["density"]), _f(r["dense_acc"]), _f(r["pruned_acc"]),
              f"{_f(r['retrained_acc'])} ± {_f(r.get('retrained_acc_std'))}", _f(r["mc"], 4),
              _f(r["barrier"], 4), _f(r["cka"], 4), r.get("regime") or ""] for r in rows]))
        masks_paragraph(doc, rows, lambda r: f"{r['temperature']:g} / density {pct(r['density'])}")
        doc.figure(f"three_regime_{axis}")
        counts = {g: sum(r.get("regime") == g for r in rows) for g in REGIMES}
        cka_t = thresholds.get("cka_threshold")
        doc.p(f"Regimes, with mc threshold {thresholds.get('mc_threshold', 'n/a')} and cka threshold "
              f"{'n/a' if cka_t is None else f'{cka_t:.4f}'} ({thresholds.get('cka_threshold_from', 'n/a')}): "
              + ", ".join(f"{counts[g]} cell{'s' * (counts[g] != 1)} in {g}" for g in REGIMES) + ".")

        doc.h3("Which temperature is best at each density?")
        items = []
        for d, r in best_per_density(rows).items():
            text = (f"density {pct(d)}: {UNIT[axis]} {r['temperature']:g} (test error {error(r):.2f}%, "
                    f"regime {r.get('regime') or 'n/a'})")
            others = sorted((x for x in rows if x["density"] == d and x is not r), key=error)
            if others:  # the best against the runner-up, on accuracy (= minus the error)
                nxt = others[0]["temperature"]
                c = compare(_retrained(res, axis, r["temperature"], d), _retrained(res, axis, nxt, d))
                text += f"; against the next best ({UNIT[axis]} {nxt:g}): {c.says('ahead', 'behind')}"
            items.append(text)
        doc.bullets(items)

        doc.h3("Does heating help at low density but hurt at high density?")
        effect = heating_effect(rows)
        if len(effect) < 2:
            doc.p("Needs at least two temperatures at two densities; rerun with more --temperatures and --densities.")
            continue
        ends = {d: (min(r["temperature"] for r in rows if r["density"] == d),
                    max(r["temperature"] for r in rows if r["density"] == d)) for d in effect}  # (hottest, coldest)
        # per seed: test error saved by heating = retrained accuracy at the hottest - at the coldest
        heat = {d: compare(_retrained(res, axis, hot, d), _retrained(res, axis, cold, d))
                for d, (hot, cold) in ends.items()}
        doc.bullets([f"density {pct(d)}: {UNIT[axis]} {ends[d][0]:g} vs {ends[d][1]:g}: "
                     f"{heat[d].says('heating helps', 'heating hurts')} (test error saved by {HEAT[axis]})"
                     for d in effect])
        low, high = min(effect), max(effect)
        helps_low, hurts_high = heat[low].up, heat[high].down
        if not res.multi_seed:
            doc.p(f"With one seed this is not called: at the lowest density ({pct(low)}) heating saves "
                  f"{heat[low].delta()}, at the highest ({pct(high)}) {heat[high].delta()}. The paper's dichotomy "
                  "is that a hotter dense network prunes better at low density and worse at high density.")
            continue
        verdict = "Yes" if helps_low and hurts_high else "No"
        doc.p(f"{verdict}: at the lowest density ({pct(low)}) heating "
              f"{heat[low].says('helps', 'hurts', 'is within noise')}, at the highest ({pct(high)}) it "
              f"{heat[high].says('helps', 'hurts', 'is within noise')}. The paper's dichotomy is that a hotter "
              "dense network prunes better at low density and worse at high density.")
