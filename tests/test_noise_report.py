"""The report's comparison sentences follow the noise rule (utils/noise.py) on hand-made results
trees: two seeds that disagree in sign read "within noise", two that agree by a wide margin are
called, one seed reports the difference and says it is one seed; the rule is stated once."""
import pytest

from utils.analysis import build_doc
from utils.document import to_markdown
from utils.io import load_csv, save_csv, save_json
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


# ---------------------------------------------------------------------------------------------
# The verdict table that ends every task section (utils/analysis/common.verdict_table), on
# hand-made trees whose verdicts follow from the rule: two seeds agreeing by a wide margin in the
# claim's direction -> reproduced; two seeds of opposite sign -> within noise; one seed -> not
# testable at this scale; a claim at a round or sparsity the run does not reach -> not testable.

VERDICT_TABLES = ["verdict_dense", "verdict_papers", "verdict_magnitude", "verdict_lottery", "verdict_early_bird", "verdict_robustness",
                  "verdict_prune_at_init", "verdict_earlycrop", "verdict_ticket_transfer", "verdict_three_regime"]


def write_more(root, gap, label_rounds=15):
    """The other tasks' summaries of one seed, each claim's measured difference `gap` points
    (the ticket-transfer label split: 20 + gap points below the own ticket at the last round)."""
    save_csv([{"model": m, "arch": "resnet20", "training": t, "sparsity": s, "clean_acc": 80.0, "fgsm_acc": 30.0,
               "pgd_acc": base + (gap if s else 0.0)}
              for t, base in (("natural", 5.0), ("pgd", 45.0)) for m, s in (("dense", 0.0), ("magnitude/sparsity_50", 0.5))],
             root / "robustness" / "summary.csv", ["model", "arch", "training", "sparsity", "clean_acc", "fgsm_acc", "pgd_acc"])
    pai = [("none", "original", 0.0, 90.0), ("random", "original", 0.9, 80.0 - gap), ("snip", "original", 0.9, 80.0),
           ("snip", "shuffle", 0.9, 80.0 + gap), ("snip", "invert", 0.9, 80.0 - 2 * gap)]
    save_csv([{"method": m, "ablation": a, "sparsity": s, "final_acc": acc, "score_seconds": 0.1} for m, a, s, acc in pai],
             root / "prune_at_init" / "summary.csv", ["method", "ablation", "sparsity", "final_acc", "score_seconds"])
    crop = [("dense", None, 0.0, 91.0), ("crop_u", False, 0.95, 88.0), ("earlycrop_u", False, 0.95, 90.5 + gap)]
    save_csv([{"method": m, "structured": st, "sparsity": s, "weight_sparsity": s, "test_acc": acc, "train_seconds": 100.0}
              for m, st, s, acc in crop], root / "earlycrop" / "summary.csv",
             ["method", "structured", "sparsity", "weight_sparsity", "test_acc", "train_seconds"])
    rows = []
    for experiment, sides, rounds, moved in (("data", ("half1", "half2"), 5, lambda r: gap),
                                             ("labels", ("digits0to4", "digits5to9"), label_rounds,
                                              lambda r: -(20 + gap) if r == label_rounds else 0.0)):
        for side, other in (sides, sides[::-1]):
            for r in range(rounds + 1):
                d = 0.65 ** r
                rows.append([experiment, "lenet300", "imp", side, side, r, d, 90.0, 20.0, 90.0])
                if r:
                    rows.append([experiment, "lenet300", "imp", other, side, r, d, 90.0, 20.0, 90.0 + moved(r)])
                    rows.append([experiment, "lenet300", "random", side, side, r, d, 90.0, 20.0, 85.0])
    cols = ["experiment", "arch", "ticket", "mask_from", "trained_on", "round", "density", "dense_acc",
            "ticket_acc", "final_acc"]
    save_csv([dict(zip(cols, r)) for r in rows], root / "ticket_transfer" / "summary.csv", cols)


def verdicts(root):
    """{table name: {claim: verdict}} of every verdict table, and the tables' order per section."""
    doc = build_doc(Results(root), root / "no_papers.md")
    sections, current = [], []
    for kind, x in doc.blocks:
        if kind == "page":
            sections.append(current)
            current = []
        elif kind == "table":
            current.append(x.name)
    sections.append(current)
    tables = {name: {row[0]: row[3] for row in t.rows} for name, t in doc.tables.items() if name.startswith("verdict_")}
    return tables, sections


def find_claim(table, start):
    hits = [v for claim, v in table.items() if claim.startswith(start)]
    assert len(hits) == 1, (start, list(table))
    return hits[0]


@pytest.fixture()
def two_seeds(tmp_path):
    def make(gaps, **kw):
        root = tmp_path / "_".join(map(str, gaps))
        for seed, g in enumerate(gaps):
            write_seed(root / f"seed_{seed}", gain=g, ctrl_gap=g, early_gap=g, seconds=2.0)
            write_more(root / f"seed_{seed}", g, **kw)
        return root
    return make


def test_every_task_section_ends_with_its_verdict_table(two_seeds):
    tables, sections = verdicts(two_seeds((5.0, 5.4)))
    assert sorted(tables) == sorted(VERDICT_TABLES)
    for name in VERDICT_TABLES:  # each in its own section, as that section's last table
        holding = [s for s in sections if name in s]
        assert len(holding) == 1 and holding[0][-1] == name, (name, sections)
        assert tables[name] and all(v in ("reproduced", "not reproduced", "within noise", "not testable at this scale")
                                    for v in tables[name].values())


def test_seeds_agreeing_in_the_claims_direction_reproduce_it(two_seeds):
    t, _ = verdicts(two_seeds((5.0, 5.4)))
    assert find_claim(t["verdict_magnitude"], "Magnitude pruning then retraining keeps") == "reproduced"
    assert find_claim(t["verdict_magnitude"], "Pruning without retraining loses") == "reproduced"
    assert find_claim(t["verdict_lottery"], "A ticket (the mask") == "reproduced"
    assert find_claim(t["verdict_lottery"], "The same mask re-initialised") == "reproduced"
    assert find_claim(t["verdict_lottery"], "Iterative pruning") == "not testable at this scale"  # no one-shot run
    assert find_claim(t["verdict_early_bird"], "A ticket drawn early") == "reproduced"
    assert find_claim(t["verdict_robustness"], "Pruned networks are more robust") == "reproduced"
    assert find_claim(t["verdict_robustness"], "A pruned ticket trained adversarially") == "reproduced"
    assert find_claim(t["verdict_prune_at_init"], "Each score") == "reproduced"
    assert find_claim(t["verdict_prune_at_init"], "Shuffling") == "reproduced"
    assert find_claim(t["verdict_prune_at_init"], "Inverting SNIP") == "reproduced"  # 10 and 10.8 points lower
    assert find_claim(t["verdict_prune_at_init"], "Re-initialising") == "not testable at this scale"  # not run
    assert find_claim(t["verdict_earlycrop"], "EarlyCroP-U (pruned early") == "reproduced"
    assert find_claim(t["verdict_earlycrop"], "EarlyCroP-U stays close") == "reproduced"
    assert find_claim(t["verdict_earlycrop"], "EarlyCroP-S (pruned early") == "not testable at this scale"
    assert find_claim(t["verdict_ticket_transfer"], "A ticket from one data half") == "reproduced"
    assert find_claim(t["verdict_ticket_transfer"], "The digits 0-4 ticket") == "reproduced"
    # Task 1's table gathers the summarised papers' claims with the verdicts their sections give
    for name in ("verdict_lottery", "verdict_early_bird", "verdict_magnitude"):
        assert t[name].items() <= t["verdict_papers"].items()
    # 4 epochs on the hand-made dense run: He et al.'s number needs the full schedule
    assert find_claim(t["verdict_dense"], "ResNet-20 reaches 91.25%") == "not testable at this scale"


def test_seeds_of_opposite_sign_are_within_noise(two_seeds):
    t, _ = verdicts(two_seeds((2.0, -1.5)))
    assert find_claim(t["verdict_magnitude"], "Magnitude pruning then retraining keeps") == "within noise"
    assert find_claim(t["verdict_lottery"], "The same mask re-initialised") == "within noise"
    assert find_claim(t["verdict_early_bird"], "A ticket drawn early") == "within noise"
    assert find_claim(t["verdict_robustness"], "Pruned networks are more robust") == "within noise"
    assert find_claim(t["verdict_prune_at_init"], "Shuffling") == "within noise"
    assert find_claim(t["verdict_prune_at_init"], "Inverting SNIP") == "within noise"
    assert find_claim(t["verdict_earlycrop"], "EarlyCroP-U stays close") == "within noise"
    assert find_claim(t["verdict_ticket_transfer"], "A ticket from one data half") == "within noise"
    # -22 and -18.5 points: called far below the 1-point margin whatever the spread
    assert find_claim(t["verdict_ticket_transfer"], "The digits 0-4 ticket") == "reproduced"


def test_one_seed_and_short_runs_are_not_testable(two_seeds):
    root = two_seeds((5.0, 5.4))
    t, _ = verdicts(root / "seed_0")
    assert set(v for table in t.values() for v in table.values()) == {"not testable at this scale"}
    # two seeds, but the label split stops at round 2 of the report's 15: not its sparsity
    t, _ = verdicts(two_seeds((5.0, 5.4, 4.0), label_rounds=2))
    assert find_claim(t["verdict_ticket_transfer"], "The digits 0-4 ticket") == "not testable at this scale"
    assert find_claim(t["verdict_ticket_transfer"], "A ticket from one data half") == "reproduced"


def test_a_collapsed_mask_is_not_a_test_of_the_score(two_seeds):
    root = two_seeds((5.0, 5.4))
    for seed in (0, 1):
        path = root / f"seed_{seed}" / "prune_at_init" / "summary.csv"
        rows = [dict(r, collapsed_layers="fc" if r["ablation"] == "invert" else "") for r in load_csv(path)]
        save_csv(rows, path, list(rows[0]))
    t, _ = verdicts(root)
    assert find_claim(t["verdict_prune_at_init"], "Inverting SNIP") == "not testable at this scale"
