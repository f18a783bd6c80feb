"""Several seeds in plot_results.py / make_report.py: aggregate.csv recomputed from the per-seed
files, figures with error bars / bands that say n, and the leaderboard (every method's accuracy
and training cost) checked against numbers computed by hand from the fixture."""
import csv
import json
import shutil
import statistics

import matplotlib
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer

from conftest import run_script
from fixtures.results_tree import DENSE_ACC, DENSE_EPOCHS, EARLY_BIRD, LOTTERY, MAGNITUDE, make_results_tree, write_csv
from utils.analysis.leaderboard import section as leaderboard_section
from utils.document import Doc
from utils.leaderboard import Leaderboard
from utils.plots import Results
from utils.plots.early_bird import fig_early_bird_accuracy
from utils.plots.leaderboard import fig_leaderboard_cost, fig_leaderboard_sparsity
from utils.plots.magnitude import fig_magnitude_trajectories
from utils.plots.overview import fig_accuracy_vs_sparsity
from utils.replicates import write_aggregates
from utils.three_regime import SUMMARY_COLUMNS as THREE_REGIME

matplotlib.use("Agg")

DENSE_FLOPS = 81_626_368  # ResNet-20 (shortcut B), forward, one 32x32 image: utils.channels.count_flops
LAYER1_CONV1_FLOPS = 2 * 2304 * 32 * 32  # its 2304 weights, each used at 32x32 positions, 2 FLOPs per MAC
# the key columns of each task's summary.csv, as the scripts write them
KEYS = {"magnitude": ["sparsity"], "lottery": ["method", "sparsity", "round"],
        "early_bird": ["ticket_epoch", "ratio"], "robustness": ["model", "arch", "training"],
        "three_regime": ["axis", "temperature", "density"]}


def shift_seed(root, seed):
    """Make `root` another seed's replicate: every *_acc column of its CSVs moves by a row-dependent
    amount, every summary.json's test_acc by +2 per seed."""
    for path in root.rglob("*.csv"):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or not any(c.endswith("_acc") for c in rows[0]):
            continue
        for i, r in enumerate(rows):
            for c in r:
                if c.endswith("_acc") and r[c]:
                    r[c] = f"{float(r[c]) + seed * (1.5 + 0.25 * i):.4f}"
        write_csv(path, list(rows[0]), [list(r.values()) for r in rows])
    for path in root.rglob("summary.json"):
        doc = json.loads(path.read_text())
        doc["test_acc"] += 2.0 * seed
        path.write_text(json.dumps(doc))


def three_regime(root, seed):
    for axis, temps in (("epochs", (2, 4)), ("batch-size", (32,))):
        write_csv(root / "three_regime" / axis / "summary.csv", THREE_REGIME,
                  [(axis, t, d, 85.0, 40.0 + t, 0.0, 80.0 + t + 10 * d + 3 * seed * d, 0.0, -0.1 + 0.05 * seed, 0.0,
                    0.2, 0.0, 0.9 - d, 0.0, 1, "II-A", "interior", 0, "yes") for t in temps for d in (0.1, 0.5)])


def make_seeds(root, seeds=(0, 1)):
    for s in seeds:
        make_results_tree(root / f"seed_{s}")
        three_regime(root / f"seed_{s}", s)
        shift_seed(root / f"seed_{s}", s)
    return root


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    return make_seeds(tmp_path_factory.mktemp("two_seeds") / "results")


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def number(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def recompute(tables, keys):
    """{(key values..., column): (mean, sample std, n)} from the per-seed rows, by hand."""
    cells = {}
    for rows in tables:
        for r in rows:
            for c, v in r.items():
                if c not in keys and number(v) is not None:
                    cells.setdefault((*(r[k] for k in keys), c), []).append(number(v))
    return {k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None, len(v)) for k, v in cells.items()}


def aggregate(path, keys):
    return {(*(r[k] for k in keys), r["column"]): (float(r["mean"]), number(r["std"]), int(r["n"]))
            for r in read(path)}


def canonical(got):
    """Key cells as the CSVs write them ('0.5' vs '0.50': numbers compared as numbers)."""
    return {tuple(number(k) if number(k) is not None else k for k in key): v for key, v in got.items()}


def test_aggregate_csv_equals_a_recomputation_from_the_seed_files(two_seeds):
    written = {p.relative_to(two_seeds).as_posix() for p in write_aggregates(two_seeds)}
    assert written == {f"{t}/aggregate.csv" for t in ("dense", "magnitude", "lottery", "early_bird", "robustness",
                                                       "three_regime")}
    for task in ("magnitude", "lottery", "early_bird", "robustness"):
        keys = KEYS[task]
        expected = recompute([read(two_seeds / f"seed_{s}" / task / "summary.csv") for s in (0, 1)], keys)
        got = aggregate(two_seeds / task / "aggregate.csv", keys)
        assert canonical(got).keys() == canonical(expected).keys(), task
        for key, (mean, std, n) in canonical(expected).items():
            assert canonical(got)[key] == pytest.approx((mean, std, n), rel=1e-5, abs=1e-6), (task, key)
    # a real spread where the seeds differ, none where they agree
    mag = canonical(aggregate(two_seeds / "magnitude" / "aggregate.csv", ["sparsity"]))
    assert mag[(0.9, "retrained_acc")][1] == pytest.approx(statistics.stdev([88.1, 88.1 + 1.5 + 0.5]), rel=1e-5)
    assert mag[(0.9, "dense_acc")] == pytest.approx((DENSE_ACC + 1.0, statistics.stdev([DENSE_ACC, DENSE_ACC + 2.0]), 2),
                                                 rel=1e-5)  # save_csv keeps 6 significant digits

    # three_regime writes one summary.csv per axis: one aggregate.csv, a `table` column naming each
    rows = read(two_seeds / "three_regime" / "aggregate.csv")
    assert list(rows[0])[:4] == ["table", "axis", "temperature", "density"]
    assert {r["table"] for r in rows} == {"three_regime/epochs/summary.csv", "three_regime/batch-size/summary.csv"}
    for axis in ("epochs", "batch-size"):
        keys = KEYS["three_regime"]
        expected = recompute([read(two_seeds / f"seed_{s}" / "three_regime" / axis / "summary.csv") for s in (0, 1)],
                             keys)
        got = {(r["axis"], r["temperature"], r["density"], r["column"]): (float(r["mean"]), number(r["std"]),
                                                                          int(r["n"]))
               for r in rows if r["table"] == f"three_regime/{axis}/summary.csv"}
        assert canonical(got).keys() == canonical(expected).keys()
        for key, value in canonical(expected).items():
            assert canonical(got)[key] == pytest.approx(value, rel=1e-5), key
    assert not [r for r in rows if r["column"] == "regime"]  # a name is not averaged

    # dense: no summary.csv, so its runs' summary.json numbers
    dense = {r["column"]: r for r in read(two_seeds / "dense" / "aggregate.csv")}
    docs = [json.loads((two_seeds / f"seed_{s}" / "dense" / "summary.json").read_text()) for s in (0, 1)]
    for column in ("test_acc", "start_test_acc", "epochs", "seconds"):
        values = [d[column] for d in docs]
        assert float(dense[column]["mean"]) == pytest.approx(statistics.fmean(values), rel=1e-5)
        assert (number(dense[column]["std"]) or 0.0) == pytest.approx(statistics.stdev(values), rel=1e-5)
        assert dense[column]["n"] == "2"
    assert float(dense["test_acc"]["std"]) == pytest.approx(statistics.stdev([DENSE_ACC, DENSE_ACC + 2]), rel=1e-5)


def errorbars(ax):
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def errorbar_of(ax, label):
    hits = [c for c in errorbars(ax) if c.get_label() == label]
    assert len(hits) == 1, [c.get_label() for c in errorbars(ax)]
    return hits[0]


def test_figures_draw_the_mean_with_error_bars_and_say_n(two_seeds):
    res = Results(two_seeds)
    ax = fig_accuracy_vs_sparsity(res).axes[0]
    assert "n = 2 seeds" in ax.get_title()
    bars = errorbar_of(ax, "magnitude pruned + retrained (Task 2)")
    seed1 = [r + 1.5 + 0.25 * i for i, (_, _, r) in enumerate(MAGNITUDE)]
    means = [(a + b) / 2 for (_, _, a), b in zip(MAGNITUDE, seed1)]
    sds = [statistics.stdev([a, b]) for (_, _, a), b in zip(MAGNITUDE, seed1)]
    line, _, (segments,) = bars.lines
    assert list(line.get_xdata()) == [50, 70, 90]
    assert list(line.get_ydata()) == pytest.approx(means)
    for (x, mean, sd), seg in zip(zip([50, 70, 90], means, sds), segments.get_segments()):
        assert seg.ravel().tolist() == pytest.approx([x, mean - sd, x, mean + sd])

    ax = fig_early_bird_accuracy(res).axes[0]
    assert "n = 2 seeds" in ax.get_title()
    line = errorbar_of(ax, "30% channels pruned, retrained").lines[0]
    seed1 = [a + 1.5 + 0.25 * i for i, a in enumerate(EARLY_BIRD[0.3])]
    assert list(line.get_ydata()) == pytest.approx([(a + b) / 2 for a, b in zip(EARLY_BIRD[0.3], seed1)])

    fig = fig_magnitude_trajectories(res)  # trajectories: mean line with a band of ± sd
    assert "n = 2 seeds" in fig.get_suptitle()
    assert all(any(isinstance(c, PolyCollection) for c in ax.collections) for ax in fig.axes)

    for build in (fig_leaderboard_sparsity, fig_leaderboard_cost):
        ax = build(res).axes[0]
        assert "n = 2 seeds" in ax.get_title() and errorbars(ax)


def test_one_seed_figures_are_plain_lines(tmp_path):
    res = Results(make_results_tree(tmp_path / "results"))
    assert write_aggregates(res.root) == [] and not list(res.root.rglob("aggregate.csv"))
    ax = fig_accuracy_vs_sparsity(res).axes[0]
    assert not errorbars(ax) and "seeds" not in ax.get_title()
    fig = fig_magnitude_trajectories(res)
    assert not any(ax.collections for ax in fig.axes) and "seeds" not in fig.get_suptitle()


def test_plot_results_and_make_report_on_two_seeds(two_seeds, tmp_path):
    root = tmp_path / "results"
    shutil.copytree(two_seeds, root)
    for p in root.glob("*/aggregate.csv"):
        p.unlink()
    plots = tmp_path / "plots"
    proc = run_script("plot_results.py", "--results-dir", root, "--plots-dir", plots)
    for task in ("dense", "magnitude", "lottery", "early_bird", "robustness", "three_regime"):
        assert (root / task / "aggregate.csv").is_file()
        assert f"wrote {root / task / 'aggregate.csv'}" in proc.stdout
    for name in ("accuracy_vs_sparsity", "magnitude_trajectories", "early_bird_accuracy", "robustness",
                 "three_regime_epochs", "leaderboard_accuracy_vs_sparsity", "leaderboard_accuracy_vs_cost"):
        assert (plots / f"{name}.png").is_file(), proc.stdout
    proc = run_script("make_report.py", "--results-dir", root, "--no-zip", "--papers", tmp_path / "none.md")
    assert f"wrote {root / 'lottery' / 'aggregate.csv'}" in proc.stdout
    md = (root / "report.md").read_text()
    assert "Table (leaderboard)" in md and "over n = 2 seeds" in md
    # every task section ends with its verdict against the paper (three_regime: its own section's table)
    for task in ("dense", "papers", "magnitude", "lottery", "early_bird", "robustness", "prune_at_init", "earlycrop",
                 "ticket_transfer", "three_regime"):
        assert f"Table (verdict_{task})" in md, task


# ---------------------------------------------------------------------------------------------
# The leaderboard
# ---------------------------------------------------------------------------------------------

def save(path, doc):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def leaderboard_tree(root):
    """The fixture tree plus what the leaderboard reads beyond it: Task 2's per-layer report at 50%,
    the tickets' configs (mask source, IMP schedule) and a pruning-at-init run; no EarlyCroP."""
    make_results_tree(root)
    save(root / "magnitude" / "sparsity_50" / "sparsity_report.json",
         {"target_sparsity": 0.5, "scope": "global", "from": "/ck/dense/epoch_006.pt",
          "layers": {"layer1.0.conv1.weight": {"total": 2304, "zeros": 1152}}})
    schedule = {0.5: [0.5], 0.7: [0.5, 0.7], 0.9: [0.5, 0.7, 0.9]}
    for method, s, _, _, _ in LOTTERY:
        path = root / "lottery" / method / f"sparsity_{100 * s:g}" / "summary.json"
        doc = json.loads(path.read_text())
        doc["config"] |= {"mask_from": "dense/epoch_006.pt", "from_epoch": 6, "rewind_epoch": 0}
        if method == "imp":
            doc["config"]["imp_schedule"] = schedule[s]
        path.write_text(json.dumps(doc))
    write_csv(root / "prune_at_init" / "summary.csv", ["method", "ablation", "sparsity", "final_acc", "epochs"],
              [("none", "original", 0, 90.0, 5), ("snip", "original", 0.9, 70.0, 5),
               ("snip", "shuffle", 0.9, 60.0, 5)])
    return root


def entry(board, method, sparsity):
    hits = [e for e in board.entries if e.method == method and e.sparsity == pytest.approx(sparsity)]
    assert len(hits) == 1, [(e.method, e.sparsity) for e in board.entries]
    return hits[0]


def test_leaderboard_accuracy_and_cost_by_hand(tmp_path):
    from models import get_model
    from utils.channels import count_flops, layer_flops
    layers = layer_flops(get_model("resnet20", shortcut="B"))
    assert count_flops(get_model("resnet20", shortcut="B")) == DENSE_FLOPS == sum(layers.values())
    assert layers["layer1.0.conv1.weight"] == LAYER1_CONV1_FLOPS

    board = Leaderboard(Results(leaderboard_tree(tmp_path / "results")))
    F = DENSE_FLOPS
    dense = entry(board, "dense (no pruning)", 0.0)
    assert (dense.acc, dense.n, dense.sd) == (DENSE_ACC, 1, None)
    assert dense.cost == board.dense_cost == 3 * DENSE_EPOCHS * F

    # Task 2 at 50%: 6 dense epochs (its mask's checkpoint) + 3 epochs of the network without half
    # of layer1.0.conv1 (its per-layer report); at 90% (no report): the kept 10% of every layer
    mag50 = entry(board, "magnitude + fine-tuning (Task 2)", 0.5)
    assert mag50.acc == 91.2 and mag50.cost == pytest.approx(3 * (6 * F + 3 * (F - LAYER1_CONV1_FLOPS / 2)))
    mag90 = entry(board, "magnitude + fine-tuning (Task 2)", 0.9)
    assert mag90.acc == 88.1 and mag90.cost == pytest.approx(3 * (DENSE_EPOCHS * F + 3 * 0.1 * F))
    # the one-shot ticket at 50% is Task 2's mask (same checkpoint, global): its per-layer counts
    one50 = entry(board, "one-shot ticket (Task 3)", 0.5)
    assert one50.acc == 90.8 and one50.cost == pytest.approx(3 * (6 * F + 4 * (F - LAYER1_CONV1_FLOPS / 2)))
    # IMP round 3 (90%) pays the dense run to epoch 6 and every round: 50%, 70%, 90%, 4 epochs each
    imp90 = entry(board, "IMP ticket (Task 3)", 0.9)
    assert imp90.acc == 87.5 and imp90.cost == pytest.approx(3 * (6 * F + 4 * (0.5 + 0.3 + 0.1) * F))
    reinit = entry(board, "control: ticket mask, re-initialised", 0.9)
    assert reinit.acc == 80.0 and reinit.cost == pytest.approx(3 * (6 * F + 4 * 0.1 * F))
    # Early-Bird: ticket epoch 2 of the dense run + 4 epochs of the compact network (its flops column)
    eb = entry(board, "Early-Bird, 30% channels, ticket epoch 2", 1 - int(272474 * 0.7) / 272474)
    assert eb.acc == EARLY_BIRD[0.3][0] and eb.measured
    assert eb.cost == pytest.approx(3 * (2 * F + 4 * 41e6 * 0.7))
    # pruning at init: the original ablation only, no dense epochs
    snip = entry(board, "SNIP at init", 0.9)
    assert snip.acc == 70.0 and snip.cost == pytest.approx(3 * 5 * 0.1 * F)
    assert not [e for e in board.entries if e.acc == 60.0 or e.method.startswith(("none", "magnitude at"))]

    # missing methods: one line each with its command; nothing invented for them
    assert ("EarlyCroP", "python earlycrop.py") in board.missing
    assert ("control: random mask, ticket's layer sparsity", "python lottery_imp.py --controls random") in board.missing
    assert not [e for e in board.entries if e.family in ("earlycrop", "random")]
    assert len(board.entries) == 1 + 3 + 3 + 3 + 1 + 8 + 1  # dense, Task 2, one-shot, IMP, reinit, Early-Bird, SNIP

    doc = Doc()
    leaderboard_section(doc, Results(tmp_path / "results"))
    table = doc.tables["leaderboard"]
    rows = {(r[0], r[1]): r for r in table.rows}
    assert rows[("90%", "IMP ticket (Task 3)")][2:5] == ["87.50", "1", f"{imp90.cost / dense.cost:.3g}"]
    bullets = [b for kind, x in doc.blocks if kind == "bullets" for b in x]
    assert "EarlyCroP: run python earlycrop.py" in bullets


def test_leaderboard_over_two_seeds(two_seeds):
    board = Leaderboard(Results(two_seeds))
    mag = entry(board, "magnitude + fine-tuning (Task 2)", 0.9)
    seeds = [88.1, 88.1 + 1.5 + 0.25 * 2]
    assert (mag.acc, mag.sd, mag.n) == pytest.approx((statistics.fmean(seeds), statistics.stdev(seeds), 2))
    dense = entry(board, "dense (no pruning)", 0.0)
    assert (dense.acc, dense.n) == (DENSE_ACC + 1.0, 2)
