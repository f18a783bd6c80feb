"""Report section of the three-regime phase model (three_regime.py), from its summary.csv and
regimes.json only: the grid table, the best temperature per density, and whether heating (fewer
dense epochs, or a smaller dense batch) helps at low density but hurts at high density. Every
comparison pairs the numbers by seed and follows the report's noise rule (utils/noise.py). Regimes
are findings only where they are robust to the thresholds (the sensitivity grid of regimes.json)."""
import math

from utils.analysis.common import (Claim, combined, compare, masks_paragraph, not_run, seed_values, seeds_caption,
                                   verdict_of, verdict_table)
from utils.plots import pct
from utils.document import Table
from utils.three_regime import AXES, REGIMES, UNDECIDED, classify

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


def _on_grid(row, thresholds):
    """{(mc threshold, cka threshold): regime} of one cell over the sensitivity grid of
    regimes.json, the thresholds in force first; recomputed from the row (with several seeds: from
    the seeds' mean mc and cka), so that table and sentences agree."""
    grid = thresholds.get("sensitivity") or {}
    pairs = [(thresholds.get("mc_threshold"), thresholds.get("cka_threshold"))]
    pairs += [(m, c) for m in grid.get("mc_thresholds", []) for c in grid.get("cka_thresholds", [])]
    if None in pairs[0]:
        return {}
    cka = math.nan if row.get("cka") is None else row["cka"]
    return {p: classify(row["mc"], cka, *p, row.get("mc_from") or "interior") for p in dict.fromkeys(pairs)}


def _regime(row, thresholds):
    """(regime at the thresholds in force, robust: a regime, the same at every grid point)."""
    on_grid = _on_grid(row, thresholds)
    if not on_grid:
        return row.get("regime") or "", row.get("robust") == "yes"
    regime = next(iter(on_grid.values()))
    return regime, regime in REGIMES and set(on_grid.values()) == {regime}


def _regime_label(row, thresholds):
    regime, robust = _regime(row, thresholds)
    return regime + ("" if robust or not regime else "*")


def _regime_sentence(doc, rows, thresholds):
    """Counts of the robust cells per regime; every other cell is counted as undecided."""
    decided = [_regime(r, thresholds) for r in rows]
    counts = {g: sum(reg == g and robust for reg, robust in decided) for g in REGIMES}
    undecided = sum(not robust for _, robust in decided)
    ties = sum(reg == UNDECIDED for reg, _ in decided)
    endpoint = sum(r.get("mc_from") == "endpoint" for r in rows)
    grid = thresholds.get("sensitivity") or {}
    doc.p(f"Regimes at mc threshold {_f(thresholds.get('mc_threshold'), 3)} and cka threshold "
          f"{_f(thresholds.get('cka_threshold'), 3)} (ours: the paper draws its lines by eye, so each cell is "
          f"also classed at every mc threshold {', '.join(map(str, grid.get('mc_thresholds', [])))} and cka "
          f"threshold {', '.join(map(str, grid.get('cka_thresholds', [])))}). Findings are the robust cells, "
          "those in the same regime at every one of these thresholds: "
          + ", ".join(f"{counts[g]} in {g}" for g in REGIMES)
          + f"; {undecided} of {len(rows)} cell{'s' * (len(rows) != 1)} are undecided (marked *)"
          + (f", {ties} of them because their mc comes from the endpoint tie and exceeds the threshold"
             if ties else "")
          + ". " + (f"In {endpoint} cell{'s' * (endpoint != 1)} mc comes from the endpoint tie (α* = 0 or 1): "
                    "there |mc| = ½|E₁ − E₀| only measures how the two copies differ, and no interior "
                    "point deviates more." if endpoint else "Every cell's mc comes from an interior point."))


def _sensitivity_table(doc, axis, res, rows, thresholds):
    grid = [k for k in _on_grid(rows[0], thresholds)] if rows else []
    if not grid:
        return
    doc.table(Table(
        f"three_regime_{axis}_sensitivity",
        f"Sensitivity of the regimes ({axis}): each cell's regime at every pair of thresholds (mc / cka); "
        "robust = the same regime at all of them; undecided = α* is an endpoint and |mc| exceeds the "
        "threshold" + (" (from the seeds' mean mc and cka)" if res.multi_seed else ""),
        [UNIT[axis], "density", *[f"{m:g} / {c:g}" for m, c in grid], "robust"],
        [[f"{r['temperature']:g}", pct(r["density"]), *_on_grid(r, thresholds).values(),
          "yes" if _regime(r, thresholds)[1] else "no"] for r in rows]))


def section(doc, res):
    _results(doc, res)
    verdict_table(doc, "three_regime", claims(res))


ZHOU = "Zhou et al. 2023, Figure 2"


def _per_seed(res, axis, temperature, density, column):
    return seed_values(res, lambda rep: rep.csv("three_regime", axis, "summary.csv"), column,
                       temperature=temperature, density=density)


def claims(res):
    """The paper's Figure 2 read as three claims, on each axis that has results: the dichotomy
    (heating helps at the lowest density, hurts at the highest, in test error), the barrier at
    low density that grows as the dense net cools (mc lower at the coldest temperature), and the
    copies' similarity at high density that grows as it cools (cka higher at the coldest). Each
    compares the grid's hottest with its coldest temperature, paired by seed."""
    dichotomy = "Heating the dense net helps pruning at low density and hurts at high density (qualitative)"
    barrier = "At low density the copies become poorly connected (mc falls) as the dense net cools (qualitative)"
    similar = "At high density the copies become more similar (CKA rises) as the dense net cools (qualitative)"
    out = []
    for axis in AXES:
        rows = res.csv("three_regime", axis, "summary.csv")
        tag = f" [{axis}]"
        command = "python three_regime.py" + ("" if axis == "epochs" else f" --axis {axis}")
        temps = sorted({r["temperature"] for r in rows})
        dens = sorted({r["density"] for r in rows})
        if len(temps) < 2 or len(dens) < 2:
            if axis == "epochs" or rows:  # the batch-size axis is optional: say it only when begun
                out += [not_run(c + tag, ZHOU, f"{command} with 2+ temperatures and densities")
                        for c in (dichotomy, barrier, similar)]
            continue
        hot, cold, low, high = temps[0], temps[-1], dens[0], dens[-1]

        def hot_vs_cold(d, column, scale=1.0):  # mc and cka x100: the noise rule speaks in points
            def per_seed(t):
                return [None if v is None else scale * v for v in _per_seed(res, axis, t, d, column)]
            return compare(per_seed(hot), per_seed(cold))
        at = f"{UNIT[axis]} {hot:g} vs {cold:g}"
        low_acc, high_acc = hot_vs_cold(low, "retrained_acc"), hot_vs_cold(high, "retrained_acc")
        out.append(Claim(dichotomy + tag, ZHOU + " (test error panels)",
                         f"test accuracy, {at}: at density {pct(low)} {low_acc.says('hotter ahead', 'hotter behind')}; "
                         f"at {pct(high)} {high_acc.says('hotter ahead', 'hotter behind')}",
                         combined([verdict_of(low_acc, "up"), verdict_of(high_acc, "down")])))
        low_mc = hot_vs_cold(low, "mc", 100.0)  # hot - cold: > 0 when the colder net has the lower mc
        out.append(Claim(barrier + tag, ZHOU + " (linear mode connectivity panel)",
                         f"mc (training-error points) at density {pct(low)}, {at}: {low_mc.says('colder lower', 'colder higher')} "
                         "(a regime boundary itself depends on thresholds: see the sensitivity table)",
                         verdict_of(low_mc, "up")))
        high_cka = hot_vs_cold(high, "cka", 100.0)  # hot - cold: < 0 when the colder copies are more similar
        out.append(Claim(similar + tag, ZHOU + " (CKA panel)",
                         f"cka x100 at density {pct(high)}, {at}: {high_cka.says('colder lower', 'colder higher')}",
                         verdict_of(high_cka, "down")))
    return out


def _results(doc, res):
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
            [UNIT[axis], "density", "dense", "pruned", "retrained", "mc", "α* at", "barrier", "cka", "regime"],
            [[f"{r['temperature']:g}", pct(r["density"]), _f(r["dense_acc"]), _f(r["pruned_acc"]),
              f"{_f(r['retrained_acc'])} ± {_f(r.get('retrained_acc_std'))}", _f(r["mc"], 4),
              r.get("mc_from") or "n/a", _f(r["barrier"], 4), _f(r["cka"], 4), _regime_label(r, thresholds)]
             for r in rows]))
        masks_paragraph(doc, rows, lambda r: f"{r['temperature']:g} / density {pct(r['density'])}")
        doc.figure(f"three_regime_{axis}")
        _regime_sentence(doc, rows, thresholds)
        _sensitivity_table(doc, axis, res, rows, thresholds)

        doc.h3("Which temperature is best at each density?")
        items = []
        for d, r in best_per_density(rows).items():
            text = (f"density {pct(d)}: {UNIT[axis]} {r['temperature']:g} (test error {error(r):.2f}%, "
                    f"regime {_regime_label(r, thresholds) or 'n/a'})")
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
