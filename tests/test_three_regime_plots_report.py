"""The three-regime figure and report section from a fixture summary.csv: the heat maps hold the
file's numbers with the hottest temperature at the top, the regime boundaries sit on the right cell
edges (solid I|II, dashed II-A|II-B), the report's table and answers are computed from the file,
and every --help flag of three_regime.py is documented in docs/three_regime.md."""
import json
import re

import numpy as np
import pytest

from conftest import REPO, run_script
from utils.analysis.three_regime import best_per_density, heating_effect, section
from utils.io import save_csv
from utils.plots import Results
from utils.plots.three_regime import FIGURES, boundaries, three_regime_figure
from utils.document import Doc
from utils.three_regime import SUMMARY_COLUMNS

TEMPS = [10, 50, 160]  # 10 epochs is the hottest
DENS = [0.05, 0.2, 0.5]
# retrained accuracy: hot wins at 5%, cold wins at 50% (the paper's dichotomy)
ACC = {10: [60.0, 80.0, 85.0], 50: [58.0, 82.0, 88.0], 160: [55.0, 81.0, 90.0]}
MC = {10: [0.01, 0.0, 0.02], 50: [-0.3, 0.01, 0.0], 160: [-0.5, -0.2, 0.0]}
CKA = {10: [0.80, 0.90, 0.95], 50: [0.70, 0.92, 0.97], 160: [0.60, 0.85, 0.99]}
REGIME = {10: ["II-A", "II-B", "II-B"], 50: ["I", "II-B", "II-B"], 160: ["I", "I", "II-B"]}


def write_fixture(root, axis="epochs", shift=0.0):
    """The grid above; `shift` moves the coldest row's accuracy (points), mc and cka (/100) a little,
    as a second seed would."""
    rows = []
    for t in TEMPS:
        for j, d in enumerate(DENS):
            k = shift if t == TEMPS[-1] else 0.0
            rows.append({"axis": axis, "temperature": t, "density": d, "dense_acc": 91.0, "pruned_acc": 30.0,
                         "pruned_acc_std": 0.0, "retrained_acc": ACC[t][j] + k, "retrained_acc_std": 0.5,
                         "mc": MC[t][j] + k / 100, "mc_std": 0.0, "barrier": max(0.0, -MC[t][j]) * 2,
                         "barrier_std": 0.0, "cka": CKA[t][j] - k / 1000, "cka_std": 0.0, "pairs": 1,
                         "regime": REGIME[t][j],
                         # one endpoint tie, within the threshold: still classed
                         "mc_from": "endpoint" if (t, d) == (10, 0.05) else "interior",
                         "mc_endpoint_pairs": int((t, d) == (10, 0.05))})
    save_csv(rows, root / "three_regime" / axis / "summary.csv", SUMMARY_COLUMNS)
    (root / "three_regime" / axis / "regimes.json").write_text(
        json.dumps({"mc_threshold": 0.1, "cka_threshold": 0.9, "cka_threshold_from": "--cka-threshold",
                    "sensitivity": {"mc_thresholds": [0.05, 0.1, 0.2], "cka_thresholds": [0.89, 0.9, 0.91]}}))
    return Results(root)


def test_heat_maps_hold_the_numbers_hottest_on_top(tmp_path):
    res = write_fixture(tmp_path)
    fig = three_regime_figure("epochs")(res)
    panels = [a for a in fig.axes if a.images and a.get_title()]
    titles = [a.get_title() for a in panels]
    assert titles[:5] == ["test error (%)", "test error - best at that density (points)",
                          "mode connectivity mc (< 0: barrier)", "loss barrier (nats)", "CKA of the copies' outputs"]
    error = np.array([[100 - a for a in ACC[t]] for t in TEMPS])
    np.testing.assert_allclose(panels[0].images[0].get_array(), error)
    np.testing.assert_allclose(panels[1].images[0].get_array(), error - error.min(0))
    np.testing.assert_allclose(panels[2].images[0].get_array(), [MC[t] for t in TEMPS])
    np.testing.assert_allclose(panels[4].images[0].get_array(), [CKA[t] for t in TEMPS])
    ax = panels[0]
    # row 0 (drawn at the top with origin="upper") is the hottest temperature
    assert [t.get_text() for t in ax.get_yticklabels()] == ["10", "50", "160"]
    assert ax.images[0].origin == "upper"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["5%", "20%", "50%"]
    styles = sorted((tuple(ln.get_xdata()), tuple(ln.get_ydata()), ln.get_linestyle())
                    for ln in ax.get_lines())
    expected = sorted(((tuple(xs), tuple(ys), "-" if s == "solid" else "--")
                       for xs, ys, s in boundaries(np.array([REGIME[t] for t in TEMPS], dtype=object))))
    assert styles == expected and len(styles) == 5


def test_boundaries_follow_the_regimes():
    regimes = np.array([REGIME[t] for t in TEMPS], dtype=object)
    segs = set((xs, ys, s) for xs, ys, s in boundaries(regimes))
    assert segs == {
        ((0.5, 0.5), (-0.5, 0.5), "dashed"),   # row 10: II-A | II-B between 5% and 20%
        ((-0.5, 0.5), (0.5, 0.5), "solid"),    # 5%: II-A at 10 above I at 50
        ((0.5, 0.5), (0.5, 1.5), "solid"),     # row 50: I | II-B
        ((0.5, 1.5), (1.5, 1.5), "solid"),     # 20%: II-B at 50 above I at 160
        ((1.5, 1.5), (1.5, 2.5), "solid"),     # row 160: I | II-B
    }


def test_report_section_is_computed_from_the_file(tmp_path):
    res = write_fixture(tmp_path)
    doc = Doc()
    section(doc, res)
    table = doc.tables["three_regime_epochs"]
    assert table.columns[:5] == ["epochs", "density", "dense", "pruned", "retrained"]
    assert len(table.rows) == 9
    assert table.rows[0] == ["10", "5%", "91.00", "30.00", "60.00 ± 0.50", "0.0100", "endpoint", "0.0000",
                             "0.8000", "II-A"]
    assert table.rows[-1][-1] == "II-B" and table.rows[6][5] == "-0.5000"
    # cka 0.90 at 10/20% is II-B at cka cut-off 0.89 and 0.9, II-A at 0.91; mc -0.2 at 160/20% is
    # I at mc cut-off 0.05 and 0.1, not at 0.2: both marked, not findings
    assert table.rows[1][-1] == "II-B*" and table.rows[7][-1] == "I*"
    sens = doc.tables["three_regime_epochs_sensitivity"]
    assert sens.columns[2] == "0.1 / 0.9" and sens.columns[-1] == "robust" and len(sens.columns) == 2 + 9 + 1
    by_cell = {(r[0], r[1]): dict(zip(sens.columns, r)) for r in sens.rows}
    assert by_cell[("160", "20%")]["0.2 / 0.9"] == "II-A" and by_cell[("160", "20%")]["0.05 / 0.91"] == "I"
    assert by_cell[("10", "20%")]["0.1 / 0.91"] == "II-A" and by_cell[("10", "20%")]["robust"] == "no"
    assert [r[-1] for r in sens.rows].count("yes") == 7
    text = "\n".join(str(b[1]) for b in doc.blocks)
    assert "density 5%: epochs 10 (test error 40.00%, regime II-A)" in text
    assert "density 50%: epochs 160 (test error 10.00%, regime II-B)" in text
    # one seed: the differences, no verdict (utils/noise.py)
    assert "density 5%: epochs 10 vs 160: Δ = +5.00 points, one seed (test error saved by fewer dense epochs)" in text
    assert "density 50%: epochs 10 vs 160: Δ = -5.00 points, one seed" in text
    assert ("With one seed this is not called: at the lowest density (5%) heating saves Δ = +5.00 points, one seed, "
            "at the highest (50%) Δ = -5.00 points, one seed.") in text
    assert "1 in II-A, 2 in I" not in text  # the order is I, II-A, II-B
    assert "2 in I, 1 in II-A, 4 in II-B; 2 of 9 cells are undecided (marked *)" in text
    assert "In 1 cell mc comes from the endpoint tie" in text
    assert ("figure", "three_regime_epochs") in doc.blocks
    assert "run python three_regime.py --axis batch-size" in text  # the other axis is missing
    rows = res.csv("three_regime", "epochs", "summary.csv")
    assert {d: r["temperature"] for d, r in best_per_density(rows).items()} == {0.05: 10, 0.2: 50, 0.5: 160}
    assert heating_effect(rows)[0.2] == pytest.approx(19.0 - 20.0)


def verdicts(res):
    doc = Doc()
    section(doc, res)
    assert doc.blocks[-1][0] == "table" and doc.blocks[-1][1].name == "verdict_three_regime"  # the last table
    return {row[0]: (row[2], row[3]) for row in doc.tables["verdict_three_regime"].rows}


def test_verdict_against_the_paper(tmp_path):
    # one seed: measured, never called
    one = verdicts(write_fixture(tmp_path / "one"))
    assert len(one) == 3 and {v for _, v in one.values()} == {"not testable at this scale"}
    dichotomy = one["Heating the dense net helps pruning at low density and hurts at high density (qualitative) [epochs]"]
    assert dichotomy[0] == ("test accuracy, epochs 10 vs 160: at density 5% Δ = +5.00 points, one seed; "
                            "at 50% Δ = -5.00 points, one seed")
    # two seeds that agree (the coldest row moved by 0.2 and 0.6): the hot-minus-cold differences
    # +5 / -5 accuracy points, mc +51 points at 5%, cka -4 points at 50% are all called
    for s, shift in enumerate((0.2, 0.6)):
        write_fixture(tmp_path / "two" / f"seed_{s}", shift=shift)
    two = verdicts(Results(tmp_path / "two"))
    assert {v for _, v in two.values()} == {"reproduced"}, two
    mc = two["At low density the copies become poorly connected (mc falls) as the dense net cools (qualitative) [epochs]"]
    assert mc[0].startswith("mc (training-error points) at density 5%, epochs 10 vs 160: colder lower (Δ = +50.60")
    # the opposite pattern: a hot net that is worse at low density -> not reproduced
    for s, shift in enumerate((10.0, 10.4)):
        write_fixture(tmp_path / "flip" / f"seed_{s}", shift=shift)
    flip = verdicts(Results(tmp_path / "flip"))
    assert flip[next(k for k in flip if k.startswith("Heating"))][1] == "not reproduced"


def test_plot_results_and_make_report_include_the_section(tmp_path):
    results = tmp_path / "results"
    write_fixture(results)
    run_script("plot_results.py", "--results-dir", results, "--plots-dir", tmp_path / "plots")
    assert (tmp_path / "plots" / "three_regime_epochs.png").is_file()
    assert not (tmp_path / "plots" / "three_regime_batch-size.png").exists()
    run_script("make_report.py", "--results-dir", results, "--no-zip", "--papers", tmp_path / "none.md")
    md = (results / "report.md").read_text()
    assert "Table (three_regime_epochs):" in md and "Figure: plots/three_regime_epochs.png" in md
    assert [f.name for f in FIGURES] == ["three_regime_epochs", "three_regime_batch-size"]


def test_every_help_flag_is_documented():
    help_text = run_script("three_regime.py", "--help").stdout
    flags = set(re.findall(r"(--[a-z][a-z0-9-]+)", help_text)) - {"--help"}
    doc = (REPO / "docs" / "three_regime.md").read_text()
    assert len(flags) > 20
    missing = sorted(f for f in flags if f"`{f}" not in doc)
    assert not missing, missing
