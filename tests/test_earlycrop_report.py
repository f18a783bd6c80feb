"""EarlyCroP's figures and report section on a hand-made results tree: right numbers, right lines."""
import matplotlib
import pytest

from utils.analysis.earlycrop import section
from utils.io import save_csv, save_json
from utils.earlycrop import SUMMARY_COLUMNS
from utils.plots import Results
from utils.plots.earlycrop import fig_earlycrop_accuracy, fig_earlycrop_detector
from utils.document import Doc

matplotlib.use("Agg")

ROWS = [
    {"method": "crop_u", "structured": False, "sparsity": 0.9, "test_acc": 80.0, "weight_sparsity": 0.9,
     "prune_epoch": 0, "train_seconds": 100, "batch_ms": 10, "disk_mb": 0.6, "params": 27000, "flops": 8e7},
    {"method": "earlycrop_u", "structured": False, "sparsity": 0.9, "test_acc": 84.5, "weight_sparsity": 0.9,
     "prune_epoch": 7, "train_seconds": 130, "batch_ms": 10, "disk_mb": 0.6, "params": 27000, "flops": 8e7},
    {"method": "crop_s", "structured": True, "sparsity": 0.9, "test_acc": 70.0, "weight_sparsity": 0.95,
     "node_sparsity": 0.9, "prune_epoch": 0, "train_seconds": 60, "batch_ms": 4, "disk_mb": 0.1, "params": 14000,
     "flops": 1e7},
    {"method": "earlycrop_s", "structured": True, "sparsity": 0.9, "test_acc": 75.25, "weight_sparsity": 0.96,
     "node_sparsity": 0.9, "prune_epoch": 7, "train_seconds": 80, "batch_ms": 5, "disk_mb": 0.12,
     "params": 13624, "flops": 2e7},
    {"method": "dense", "sparsity": 0.0, "test_acc": 90.0, "weight_sparsity": 0.0, "train_seconds": 200,
     "batch_ms": 20, "disk_mb": 1.1, "params": 272474, "flops": 8e7},
    {"method": "snip", "structured": False, "sparsity": 0.9, "source": "missing; run: python prune_at_init.py --methods snip"},
]


@pytest.fixture()
def res(tmp_path):
    save_csv(ROWS, tmp_path / "earlycrop" / "summary.csv", SUMMARY_COLUMNS)
    save_json(DETECTION, tmp_path / "earlycrop" / "detection.json")
    return Results(tmp_path)


# Worked by hand: d_2 = 0.2, so τ = 0.02 at s = 0.9 and 0.08 at s = 0.6; the authors' change first
# drops below both at t = 4, just after the milestone at 3; the paper ratio first drops below 0.4
# at t = 3 (0.125) and below 0.1 at t = 4 (0.025).
AUTHORS = {"0.9": {"threshold": 0.02, "factor": 0.1, "prune_epoch": 4, "fired": True, "after_milestone": 3},
           "0.6": {"threshold": 0.08, "factor": 0.4, "prune_epoch": 4, "fired": True, "after_milestone": 3}}
PAPER = {"0.9": {"threshold": 0.1, "prune_epoch": 4, "fired": True, "after_milestone": 3},
         "0.6": {"threshold": 0.4, "prune_epoch": 3, "fired": True, "after_milestone": None}}
DETECTION = {"detector": "authors", "milestones": [3], "prune_by": 4, "prune_epoch_override": None,
             "delta": [0, 4, 6, 6.5, 6.6], "ratio": [None, None, 0.5, 0.125, 0.025],
             "d": [None, 0, 0.2, 0.35, 0.36], "change": [None, None, 0.2, 0.15, 0.01], "sparsities": AUTHORS,
             "rules": {"authors": {"sparsities": AUTHORS}, "paper": {"sparsities": PAPER}}}


def lines(ax):
    return {ln.get_label(): ln for ln in ax.get_lines()}


def test_accuracy_figure(res):
    fig = fig_earlycrop_accuracy(res)
    structured, unstructured = fig.axes[:2]
    s = lines(structured)
    assert list(s["EarlyCroP-S"].get_xdata()) == pytest.approx([96.0])
    assert list(s["EarlyCroP-S"].get_ydata()) == [75.25] and list(s["CroP-S (at init)"].get_ydata()) == [70.0]
    u = lines(unstructured)
    assert list(u["EarlyCroP-U"].get_ydata()) == [84.5] and "SNIP (at init)" not in u  # no accuracy: no line
    assert list(u["dense (90.00%)"].get_ydata()) == [90.0, 90.0]


def test_detector_figure(res):
    fig = fig_earlycrop_detector(res)
    delta_ax, ratio_ax = fig.axes[:2]
    assert list(delta_ax.get_lines()[0].get_ydata()) == [0, 4, 6, 6.5, 6.6]
    ratio_line = lines(ratio_ax)["|Δ_t − Δ_{t−1}| / Δ_1 (paper)"]
    assert list(ratio_line.get_xdata()) == [2, 3, 4] and list(ratio_line.get_ydata()) == [0.5, 0.125, 0.025]
    authors = lines(ratio_ax)["|d_t − d_{t−1}| / d_2 (authors)"]  # change_t / d_2 from t = 3
    assert list(authors.get_xdata()) == [3, 4] and list(authors.get_ydata()) == pytest.approx([0.75, 0.05])
    assert list(lines(ratio_ax)["threshold 0.1 (sparsity 90%)"].get_ydata()) == [0.1, 0.1]  # the factor
    assert any(list(ln.get_xdata()) == [4, 4] for ln in ratio_ax.get_lines())  # the prune epoch
    assert any(list(ln.get_xdata()) == [3.5, 3.5] for ln in ratio_ax.get_lines())  # the lr drop after 3
    assert "prune at epoch 4 (sparsity 90%, authors rule, fired)" in lines(delta_ax)


def test_report_section(res, tmp_path):
    doc = Doc()
    section(doc, res)
    table = doc.tables["earlycrop"]
    assert [r[0] for r in table.rows] == ["dense", "EarlyCroP-S", "CroP-S (at init)", "EarlyCroP-U", "CroP-U (at init)"]
    assert table.rows[1][2] == "75.25" and table.rows[1][4] == "90.0%" and table.rows[3][2] == "84.50"
    text = " ".join(" ".join(b[1]) if isinstance(b[1], list) else str(b[1]) for b in doc.blocks)
    assert "EarlyCroP-U 84.50% vs CroP-U (at init) 80.00%, pruning at epoch 7 instead of at init: Δ = +4.50 points, one seed" in text
    assert ("EarlyCroP-S against the best other structured method there (CroP-S (at init), 70.00%): "
            "Δ = +5.25 points, one seed") in text
    assert ("EarlyCroP-U against the best other unstructured method there (CroP-U (at init), 80.00%): "
            "Δ = +4.50 points, one seed") in text
    assert ("EarlyCroP-U costs 0.65x the dense run's training time; its accuracy against the dense run: "
            "Δ = -5.50 points, one seed") in text
    assert "EarlyCroP-S keeps 5.0% of the dense parameters and 25.0% of its FLOPs, 0.25x" in text
    assert "python prune_at_init.py --methods snip" in text  # a missing baseline names its command
    assert ("sparsity 90%: authors' rule (|d_t − d_{t−1}| < (1 − s)·d_2, d_t = ‖θ_t − θ_1‖/‖θ_1‖) (used): epoch 4 "
            "(fired at the learning-rate drop after epoch 3, not as the weights settled); paper rule") in text
    assert "paper rule (|Δ_t − Δ_{t−1}| / Δ_1 < 1 − s, Δ_t = ‖θ_t − θ_0‖²): epoch 3 (the rule fired)" in text
    empty = Doc()
    section(empty, Results(tmp_path / "nothing"))
    assert "run python earlycrop.py" in " ".join(str(b[1]) for b in empty.blocks)


def test_report_says_a_hand_set_prune_epoch_0_was_set_by_hand(tmp_path):
    save_csv(ROWS, tmp_path / "earlycrop" / "summary.csv", SUMMARY_COLUMNS)
    save_json(dict(DETECTION, prune_epoch_override=0), tmp_path / "earlycrop" / "detection.json")
    doc = Doc()
    section(doc, Results(tmp_path))
    text = " ".join(" ".join(b[1]) if isinstance(b[1], list) else str(b[1]) for b in doc.blocks)
    assert "every EarlyCroP run pruned at epoch 0, set by hand with --prune-epoch (not where a rule fired)" in text
    assert "(used)" not in text
    fig = fig_earlycrop_detector(Results(tmp_path))
    assert "prune at epoch 0 (sparsity 90%, set by --prune-epoch)" in lines(fig.axes[0])


def test_other_scripts_rows_are_found_with_their_costs(tmp_path):
    from utils.earlycrop import other_rows
    ck, res = tmp_path / "checkpoints", tmp_path / "results"

    def run(folder, acc, seconds):
        """A finished 2-epoch run: `seconds` in epochs 1-2, 7 more in its epoch-0 evaluation."""
        save_json({"test_acc": acc, "seconds": seconds + 7, "epochs": 2}, res / folder / "summary.json")
        save_csv([{"epoch": 0, "seconds": 7}, {"epoch": 1, "seconds": seconds / 2}, {"epoch": 2, "seconds": seconds / 2}],
                 res / folder / "trajectory.csv")
        (ck / folder).mkdir(parents=True, exist_ok=True)
        (ck / folder / "final.pt").write_bytes(b"")

    run("prune_at_init/snip/original/sparsity_90", 81.0, 50.0)
    run("prune_at_init/grasp/original/sparsity_60", 85.0, 50.0)  # another sparsity: not a row at 90%
    save_json({"ratios": {"0.9": {"eb_epoch": 2}}}, res / "early_bird" / "detection.json")
    run("early_bird/epoch_002/ratio_90", 77.0, 30.0)
    run("early_bird/epoch_003/ratio_90", 79.0, 30.0)  # not the detected ticket
    for s, acc in (("50", 88.0), ("80", 86.0), ("90", 84.0)):
        run(f"lottery_rewind_010/imp/sparsity_{s}", acc, 100.0)
        run(f"lottery/imp/sparsity_{s}", acc - 10, 100.0)
    save_csv([{"method": "snip", "ablation": "original", "sparsity": 0.9, "score_seconds": 3.0},
              {"method": "snip", "ablation": "shuffle", "sparsity": 0.9, "score_seconds": 99.0}],
             res / "prune_at_init" / "summary.csv")
    dense_rows = [{"epoch": str(e), "seconds": "10"} for e in range(5)]  # 4 epochs of 10 s
    found, missing = other_rows(0.9, ck, res, ck / "dense", dense_rows)
    rows = {r["method"]: r for r, _ in found}
    assert set(rows) == {"snip", "early_bird", "ltr"}
    # every row: its scoring time and its epochs 1…E, as the dense row counts its own
    assert rows["snip"]["test_acc"] == 81.0 and rows["snip"]["train_seconds"] == 3 + 50.0
    assert rows["snip"]["epochs"] == (0, 2) and rows["early_bird"]["epochs"] == (2, 2)
    assert rows["ltr"]["epochs"] == (4 + 3 * 2, 0)  # masked rounds compute at the dense FLOPs
    assert rows["early_bird"]["test_acc"] == 77.0 and rows["early_bird"]["prune_epoch"] == 2
    assert rows["early_bird"]["train_seconds"] == 2 * 10 + 30  # dense epochs to the ticket + retraining
    assert rows["ltr"]["test_acc"] == 84.0 and "lottery_rewind_010" in rows["ltr"]["source"]  # late rewinding
    assert rows["ltr"]["train_seconds"] == 40 + 3 * 100  # the dense run + the IMP rounds up to 90%
    assert [str(f) for _, f in found] == [str(ck / "prune_at_init/snip/original/sparsity_90/final.pt"),
                                          str(ck / "early_bird/epoch_002/ratio_90/final.pt"),
                                          str(ck / "lottery_rewind_010/imp/sparsity_90/final.pt")]
    assert {m for m, _ in missing} == {"random_u", "grasp"}
    assert any("--methods grasp --sparsities 0.9" in c for _, c in missing)
