"""The report's comparison sentences follow the noise rule (utils/noise.py) on hand-made results
trees: two seeds that disagree in sign read "within noise", two that agree by a wide margin are
called, one seed reports the difference and says it is one seed; the rule is stated once."""
import pytest

from utils.analysis import build_doc
from utils.document import to_markdown
from utils.io import save_csv, save_json
from utils.noise import ONE_SEED, RULE
from utils.plots import Results

DENSE = 90.0
CONFIG = {"arch": "resnet20", "shortcut": "B", "seed": 0, "epochs": 4, "batch_size": 128, "lr": 0.1,
          "momentum": 0.9, "weight_decay": 5e-4, "milestones": [2, 3], "train_subset": 0, "test_subset": 0}


def write_seed(root, gain, ctrl_gap, early_gap, seconds):
    """One seed's replicate: magnitude retrained `gain` points over the dense network at 50%; the
    IMP ticket `gain` over it at 50% and 90%, the reinit control `ctrl_gap` below the ticket at 90%;
    the earliest Early-Bird ticket `early_gap` over the latest; `seconds` per dense epoch."""
    save_json({"test_acc": DENSE, "epochs": 4, "params": 272474, "device": "cpu", "config": CONFIG},
              root / "dense" / "summary.json")
    save_csv([{"epoch": e, "test_acc": 10.0 + 20 * e, "seconds": seconds} for e in range(5)],
             root / "dense" / "trajectory.csv", ["epoch", "test_acc", "seconds"])
    save_csv([{"sparsity": 0.5, "dense_acc": DENSE, "pruned_acc": 80.0, "retrained_acc": DENSE + gain}],
             root / "magnitude" / "summary.csv", ["sparsity", "dense_acc", "pruned_acc", "retrained_acc"])
    ticket = DENSE + gain
    save_csv([{"method": "imp", "sparsity": 0.5, "round": 1, "dense_acc": DENSE, "ticket_acc": 10.0, "retrained_acc": ticket},
              {"method": "imp", "sparsity": 0.9, "round": 2, "dense_acc": DENSE, "ticket_acc": 10.0, "retrained_acc": ticket},
              {"method": "reinit", "sparsity": 0.9, "round": 1, "dense_acc": DENSE, "ticket_acc": 10.0,
               "retrained_acc": ticket - ctrl_gap}],
             root / "lottery" / "summary.csv", ["method", "sparsity", "round", "dense_acc", "ticket_acc", "retrained_acc"])
    save_csv([{"ticket_epoch": e, "ratio": 0.3, "dense_acc": DENSE, "pruned_acc": 20.0,
               "retrained_acc": 85.0 + (early_gap if e == 1 else 0.0), "params": 1000, "flops": 1e6} for e in (1, 2, 3)],
             root / "early_bird" / "summary.csv",
             ["ticket_epoch", "ratio", "dense_acc", "pruned_acc", "retrained_acc", "params", "flops"])


def report(root):
    return to_markdown(build_doc(Results(root), root / "no_papers.md"), {})


@pytest.fixture()
def disagree(tmp_path):
    """Seed 0 says pruning helps, seed 1 says it hurts; so for tickets, controls and early vs late."""
    write_seed(tmp_path / "seed_0", gain=2.0, ctrl_gap=3.0, early_gap=1.0, seconds=2.0)
    write_seed(tmp_path / "seed_1", gain=-1.5, ctrl_gap=-2.0, early_gap=-1.0, seconds=3.0)
    return tmp_path


@pytest.fixture()
def agree(tmp_path):
    """Both seeds: +5 / +5.4 points, controls 8 / 9 points behind, early 2 / 2.2 points ahead."""
    write_seed(tmp_path / "seed_0", gain=5.0, ctrl_gap=8.0, early_gap=2.0, seconds=2.0)
    write_seed(tmp_path / "seed_1", gain=5.4, ctrl_gap=9.0, early_gap=2.2, seconds=3.0)
    return tmp_path


def test_seeds_that_disagree_in_sign_are_within_noise(disagree):
    md = report(disagree)
    # paired differences +2 and -1.5: mean +0.25, sd 2.47, se 1.75
    assert "Pruning plus retraining against the original network: within noise at 50% (Δ = +0.25 ± 1.75 points, n = 2)." in md
    assert "IMP ticket 90.25% (vs original: within noise (Δ = +0.25 ± 1.75 points, n = 2))" in md
    assert "re-initialised (control) 89.75% (best ticket vs it: within noise (Δ = +0.50 ± 2.50 points, n = 2))" in md
    assert "the better ticket per seed: within noise at 90% (Δ = +0.50 ± 2.50 points, n = 2)." in md
    assert "A lottery-ticket effect (the ticket called within 1 point of the original and called ahead of the controls) " \
           "is seen at no sparsity." in md
    assert "earliest vs latest: within noise (Δ = +0.00 ± 1.00 points, n = 2)" in md
    assert "Early beats late (the earliest ticket called ahead of the latest) at 0 of 1 ratios." in md
    for verdict in ("beats it at", "ahead at", "earliest ahead", "improves accuracy at"):
        assert verdict not in md


def test_seeds_that_agree_by_a_wide_margin_are_called(agree):
    md = report(agree)
    # paired differences +5.0 and +5.4: mean +5.2, se 0.2
    assert "Pruning plus retraining against the original network: beats it at 50% (Δ = +5.20 ± 0.20 points, n = 2)." in md
    assert "IMP ticket 95.20% (vs original: higher (Δ = +5.20 ± 0.20 points, n = 2))" in md
    assert "best ticket vs it: ahead (Δ = +8.50 ± 0.50 points, n = 2)" in md
    assert "(one-shot or IMP, per seed) against the original (90.00%): within 1 point at 50% (Δ = +5.20 ± 0.20 points, " \
           "n = 2), 90% (Δ = +5.20 ± 0.20 points, n = 2)." in md
    assert "is seen at 90%." in md
    assert "earliest vs latest: earliest ahead (Δ = +2.10 ± 0.10 points, n = 2)" in md
    assert "Early beats late (the earliest ticket called ahead of the latest) at 1 of 1 ratios: 30%." in md
    assert "within noise at" not in md


def test_rule_stated_once_tables_show_mean_and_sd_with_n(agree):
    md = report(agree)
    assert md.count(RULE) == 1 and "Seeds: n = 2 (0, 1); tables show mean ± sd over them." in md
    assert "(seeds 0, 1: one complete replicate each)" in md
    assert "Table (magnitude): Task 2: ResNet-20 test accuracy (%) before pruning, after pruning (not retrained) and " \
           "after retraining; mean ± sd over n = 2 seeds (0, 1)" in md
    assert "| 50% | 90.00 ± 0.00 | 80.00 ± 0.00 | 95.20 ± 0.28 |" in md  # sd of (95.0, 95.4)
    # run time: both seeds' trajectories summed (5 epochs x 2 s + 5 epochs x 3 s)
    assert "| Step 1: dense training | 0m 25s | 25 |" in md and "all 2 seeds together" in md
    assert ONE_SEED not in md


def test_one_seed_reports_the_difference_and_names_the_noise_scale(disagree):
    md = report(disagree / "seed_0")
    assert md.count(ONE_SEED) == 1 and "bench/accuracy.py, sd 1.93 points over 6 seeds" in md
    assert "Pruning plus retraining against the original network: Δ = +2.00 at 50% (points, one seed; " \
           "seed-to-seed sd ≈ 1.93)." in md
    assert "IMP ticket 92.00% (vs original: Δ = +2.00 points, one seed)" in md
    assert "best ticket vs it: Δ = +3.00 points, one seed" in md
    assert "With one seed no lottery-ticket effect is called" in md
    assert "earliest vs latest: Δ = +1.00 points, one seed" in md
    assert "(seed 0)" in md and "| 50% | 90.00 | 80.00 | 92.00 |" in md  # no ± for one seed
    for verdict in ("within noise", "beats it at", "ahead (", "higher (", "is seen at"):
        assert verdict not in md
