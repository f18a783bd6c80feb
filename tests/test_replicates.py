"""Several seeds read as one: rows matched on their keys, means with sample sd and n, and the
long-form aggregate.csv recomputed from the per-seed files."""
import csv
import statistics

import pytest

from utils.io import save_csv, save_json
from utils.plots import Results
from utils.replicates import mean_json, mean_rows, n_of, sd_of, seed_folders, write_aggregates


def lottery_rows(shift):
    return [{"method": "oneshot", "sparsity": 0.5, "round": 1, "dense_acc": 90 + shift, "retrained_acc": 89 + 2 * shift},
            {"method": "imp", "sparsity": 0.5, "round": 1, "dense_acc": 90 + shift, "retrained_acc": 88 - shift}]


def test_mean_rows_match_on_keys_not_order():
    seed0 = lottery_rows(0.0)
    seed1 = list(reversed(lottery_rows(1.0)))  # another row order: matched by method/sparsity/round
    rows = mean_rows([seed0, seed1], "lottery/summary.csv")
    assert [r["method"] for r in rows] == ["oneshot", "imp"]
    oneshot = rows[0]
    assert oneshot["retrained_acc"] == pytest.approx(90.0)
    assert sd_of(oneshot, "retrained_acc") == pytest.approx(statistics.stdev([89.0, 91.0]))
    assert n_of(oneshot, "retrained_acc") == 2
    assert rows[1]["retrained_acc"] == pytest.approx(87.5)


def test_row_missing_from_one_seed_averages_the_others():
    seed1 = lottery_rows(1.0)[:1]
    rows = mean_rows([lottery_rows(0.0), seed1], "lottery/summary.csv")
    imp = next(r for r in rows if r["method"] == "imp")
    assert imp["retrained_acc"] == 88 and n_of(imp, "retrained_acc") == 1 and sd_of(imp, "retrained_acc") is None


def test_mean_json_numbers_only():
    doc = mean_json([{"test_acc": 80.0, "device": "cpu", "config": {"seed": 0}},
                     {"test_acc": 84.0, "device": "cpu", "config": {"seed": 1}}])
    assert doc["test_acc"] == 82.0 and doc["device"] == "cpu" and doc["config"] == {"seed": 0}
    assert sd_of(doc, "test_acc") == pytest.approx(statistics.stdev([80.0, 84.0]))


def make_tree(root, seeds):
    for s in seeds:
        save_csv(lottery_rows(float(s)), root / f"seed_{s}" / "lottery" / "summary.csv",
                 ["method", "sparsity", "round", "dense_acc", "retrained_acc"])
        save_json({"test_acc": 70.0 + s, "seconds": 10.0 * (s + 1), "device": "cpu"},
                  root / f"seed_{s}" / "dense" / "summary.json")


def test_results_over_seed_folders(tmp_path):
    make_tree(tmp_path, [0, 1, 3])
    res = Results(tmp_path)
    assert res.seeds == [0, 1, 3] and list(seed_folders(tmp_path)) == [0, 1, 3]
    assert res.per_seed(lambda r: r.dense_summary["test_acc"]) == [70.0, 71.0, 73.0]
    assert res.dense_summary["test_acc"] == pytest.approx(214 / 3)
    single = Results(tmp_path / "seed_0")
    assert single.seeds == [] and single.replicates == [single]
    assert single.lottery == lottery_rows(0.0)


def test_aggregate_csv_recomputes_from_the_seed_files(tmp_path):
    make_tree(tmp_path, [0, 1])
    paths = write_aggregates(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == ["dense/aggregate.csv", "lottery/aggregate.csv"]
    with open(tmp_path / "lottery" / "aggregate.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["method", "sparsity", "round", "column", "mean", "std", "n"]
    got = {(r["method"], r["column"]): (float(r["mean"]), float(r["std"]), int(r["n"])) for r in rows}
    for method, i in (("oneshot", 0), ("imp", 1)):
        for column in ("dense_acc", "retrained_acc"):
            values = [lottery_rows(float(s))[i][column] for s in (0, 1)]
            assert got[(method, column)] == pytest.approx((statistics.fmean(values), statistics.stdev(values), 2), rel=1e-5)
    with open(tmp_path / "dense" / "aggregate.csv", newline="") as f:
        dense = {r["column"]: r for r in csv.DictReader(f)}
    assert float(dense["test_acc"]["mean"]) == 70.5 and dense["test_acc"]["n"] == "2"
    assert write_aggregates(tmp_path / "seed_0") == []  # one seed: nothing to aggregate
