"""plot_results.py and make_report.py on a small fixture results tree (tests/fixtures/results_tree.py):
every figure drawn from the right numbers, the report's tables and analysis equal to the CSVs,
missing inputs skipped with the command that makes them, and the code zip holding source only."""
import re
import shutil
import subprocess
import zipfile

import matplotlib
import numpy as np
import pytest
import torch

from conftest import REPO, assert_user_error, run_script
from fixtures.results_tree import DENSE_ACC, EARLY_BIRD, LOTTERY, MAGNITUDE, TICKET_EPOCHS, make_results_tree
from utils.plots import FIGURES, Results, dense, early_bird, leaderboard, lottery, magnitude, overview, robustness
from utils.plots.early_bird import fig_early_bird_accuracy, fig_mask_distance
from utils.plots.overview import fig_accuracy_vs_sparsity

matplotlib.use("Agg")

# the figures of the tasks the fixture tree holds results for (not the newer tasks'), and the
# leaderboard drawn from them
CORE_FIGURE_NAMES = {f.name for m in (dense, magnitude, lottery, overview, early_bird, robustness, leaderboard)
                     for f in m.FIGURES}


def md_table(md, name):
    """Rows (lists of cells) of the Markdown table the report labels `Table (name):`."""
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"Table ({name}):"))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows[0], rows[2:]  # header, body (after the |---| line)


def pdf_pages(path):
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    return len(re.findall(rb"/Type\s*/Page\b(?!s)", data))


@pytest.fixture()
def results(tmp_path):
    return make_results_tree(tmp_path / "results")


def test_plot_results_writes_every_figure(results, tmp_path):
    plots = tmp_path / "plots"
    proc = run_script("plot_results.py", "--results-dir", results, "--plots-dir", plots)
    # the fixture has no random-mask control, so exactly that figure is skipped
    drawn = CORE_FIGURE_NAMES - {"lottery_control_random_trajectories"}
    assert {p.stem for p in plots.glob("*.png")} == drawn
    assert {p.stem for p in plots.glob("*.pdf")} == drawn
    for name in drawn:
        assert (plots / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (plots / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    assert f"{len(drawn)} of {len(FIGURES)} figures written" in proc.stdout
    assert "skipped lottery_control_random_trajectories" in proc.stdout
    assert "python lottery_imp.py --controls random" in proc.stdout
    assert not list(plots.glob(".*.tmp"))  # atomic writes leave no temporaries
    # one seed: no aggregate.csv, nothing said about one
    assert "aggregate" not in proc.stdout and not list(results.rglob("aggregate.csv"))


def _line(ax, label):
    hits = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert len(hits) == 1, [ln.get_label() for ln in ax.get_lines()]
    return hits[0]


def test_figures_plot_the_csv_numbers(results):
    res = Results(results)
    ax = fig_accuracy_vs_sparsity(res).axes[0]
    mag = _line(ax, "magnitude pruned + retrained (Task 2)")
    assert list(mag.get_xdata()) == [50, 70, 90]
    assert list(mag.get_ydata()) == [r for _, _, r in MAGNITUDE]
    assert list(_line(ax, "magnitude pruned, not retrained").get_ydata()) == [p for _, p, _ in MAGNITUDE]
    assert list(_line(ax, "IMP ticket, trained (Task 3)").get_ydata()) == [r[4] for r in LOTTERY if r[0] == "imp"]
    assert list(_line(ax, "control: same mask, re-initialised").get_xdata()) == [90]
    assert _line(ax, f"dense ({DENSE_ACC:.2f}%)").get_ydata()[0] == DENSE_ACC

    ax = fig_early_bird_accuracy(res).axes[0]
    line = _line(ax, "30% channels pruned, retrained")
    assert list(line.get_xdata()) == TICKET_EPOCHS and list(line.get_ydata()) == EARLY_BIRD[0.3]

    fig = fig_mask_distance(res)
    heat = [a for a in fig.axes if a.images]
    assert [a.get_title() for a in heat] == ["30% channels pruned", "50% channels pruned"]
    expected = np.array([[0.05 * abs(i - j) for j in range(9)] for i in range(9)])
    np.testing.assert_allclose(heat[0].images[0].get_array(), expected, atol=1e-9)
    marker = _line(heat[0], "detected Early-Bird epoch 3")  # detection.json: eb_epoch 3 for 0.3
    assert list(marker.get_xdata()) == [3] and list(marker.get_ydata()) == [3]
    assert not [ln for ln in heat[1].get_lines() if ln.get_label().startswith("detected")]  # null: no mark


def test_missing_inputs_are_skipped_with_the_command(tmp_path):
    results = make_results_tree(tmp_path / "results", parts=("dense",))
    plots = tmp_path / "plots"
    proc = run_script("plot_results.py", "--results-dir", results, "--plots-dir", plots)
    # (beside the figures, the hidden digest of their inputs: utils/freshness.py)
    assert sorted(p.name for p in plots.iterdir()) == [".inputs.json", "dense_trajectory.pdf", "dense_trajectory.png"]
    skipped = [ln for ln in proc.stdout.splitlines() if ln.startswith("skipped")]
    assert len(skipped) == len(FIGURES) - 1
    assert any("prune_at_init_ablations" in ln and "(run: python prune_at_init.py)" in ln for ln in skipped)
    assert any("magnitude_trajectories" in ln and "(run: python prune_magnitude.py)" in ln for ln in skipped)
    assert any("early_bird_accuracy" in ln and "(run: python early_bird.py)" in ln for ln in skipped)
    assert any("robustness:" in ln and "(run: python robustness.py)" in ln for ln in skipped)

    # the report still builds, saying what is missing instead of inventing numbers
    proc = run_script("make_report.py", "--results-dir", results, "--no-zip", "--papers", tmp_path / "none.md")
    md = (results / "report.md").read_text()
    assert "No results yet (results/magnitude/summary.csv): run python prune_magnitude.py." in md
    assert "No results yet (results/early_bird/summary.csv): run python early_bird.py." in md
    assert "No results yet (results/prune_at_init/summary.csv): run python prune_at_init.py." in md
    assert f"The paper summaries are missing: {tmp_path / 'none.md'} was not found." in md
    assert pdf_pages(results / "report.pdf") >= 2


def test_missing_results_dir_is_a_user_error(tmp_path):
    assert_user_error(run_script("plot_results.py", "--results-dir", tmp_path / "nope", check=False),
                      str(tmp_path / "nope"), "run_all.py")
    assert_user_error(run_script("make_report.py", "--results-dir", tmp_path / "nope", check=False),
                      str(tmp_path / "nope"))


def test_report_tables_and_analysis_match_the_csvs(results, tmp_path):
    papers = tmp_path / "papers.md"
    papers.write_text("# Task 1\n\n## Lottery tickets\n\nA **winning** ticket is\na sparse subnetwork.\n\n"
                      "- first point\n- second `point`\n")
    proc = run_script("make_report.py", "--results-dir", results, "--papers", papers)
    pages = int(re.search(r"\((\d+) pages", proc.stdout).group(1))
    assert pages >= 8 and pdf_pages(results / "report.pdf") == pages
    md = (results / "report.md").read_text()

    # Task 2: every row of magnitude/summary.csv, plus the differences, two decimals
    header, rows = md_table(md, "magnitude")
    assert header[:4] == ["sparsity", "original", "pruned", "retrained"]
    assert rows == [[f"{100 * s:g}%", f"{DENSE_ACC:.2f}", f"{p:.2f}", f"{r:.2f}", f"{r - p:+.2f}",
                     f"{r - DENSE_ACC:+.2f}"] for s, p, r in MAGNITUDE]
    # one seed: every comparison reports its difference and says it is one seed (utils/noise.py)
    assert "retrained vs pruned Δ = +48.10 points, one seed" in md  # 90%: 88.1 - 40.0
    assert ("Pruned (not retrained) against the original: Δ = -0.50 at 50%, -6.00 at 70%, -51.00 at 90% "
            "(points, one seed; seed-to-seed sd ≈ 1.93)") in md
    assert "Pruning plus retraining against the original network: Δ = +0.20 at 50%, -0.40 at 70%" in md
    assert "sd 1.93 points over 6 seeds" in md and "These results hold one seed" in md  # the rule, once

    # Task 3: the table, the control comparison and Task 2 vs Task 3
    _, rows = md_table(md, "lottery")
    assert [(r[0], r[1], r[2], r[4], r[5]) for r in rows] == [
        ({"oneshot": "one-shot ticket", "imp": "IMP ticket", "reinit": "re-initialised (control)"}[m],
         f"{100 * s:g}%", str(rnd), f"{t:.2f}", f"{a:.2f}") for m, s, rnd, t, a in LOTTERY]
    assert "re-initialised (control) 80.00% (best ticket vs it: Δ = +7.50 points, one seed)" in md  # IMP 87.5 vs 80
    assert "against the original (91.00%): Δ = +0.10 at 50%, -0.60 at 70%, -3.50 at 90%" in md
    _, rows = md_table(md, "task2_vs_task3")
    assert rows[2] == ["90%", "88.10", "86.00", "87.50", "80.00"]
    assert "90%: one-shot ticket vs magnitude retraining: Δ = -2.10 points, one seed." in md

    # Task 4: the table, best epoch per ratio, early vs late, the detector
    header, rows = md_table(md, "early_bird")
    assert header == ["ticket epoch", "channels pruned", "original", "dense at ticket epoch", "pruned",
                      "retrained", "params", "FLOPs"]
    assert [(r[0], r[1], r[5]) for r in rows] == [
        (str(e), f"{100 * ratio:g}%", f"{a:.2f}") for ratio, accs in EARLY_BIRD.items()
        for e, a in zip(TICKET_EPOCHS, accs)]
    assert "30% channels pruned: best ticket epoch 4 (90.20%)" in md
    assert "50% channels pruned: best ticket epoch 6 (88.50%)" in md
    assert "Earliest minus latest ticket: Δ = +0.20 at 30%, -1.40 at 50%" in md
    assert "saving 50% of the dense training" in md  # best ticket epoch 4 of 8 dense epochs
    _, rows = md_table(md, "detection")
    assert rows == [["30%", "3", "0.0500"], ["50%", "none", ""]]
    assert "30%: the detector picks epoch 3" in md
    assert "50%: the mask never settled below eps = 0.1" in md

    # Bonus, set-up and Task 1
    assert ("resnet20, natural training, pruned vs dense under PGD (5.00%): Δ = +1.50 at magnitude/sparsity_50, "
            "-1.00 at magnitude/sparsity_90") in md
    _, rows = md_table(md, "recipes")
    assert rows[0][:7] == ["Step 1: dense training (1 run)", "8", "128", "0.1", "0.9", "0.0001", "4 6"]
    assert rows[1][0] == "Task 2: magnitude retraining (3 runs)" and rows[1][3] == "0.01"
    assert "## Lottery tickets" in md and "A winning ticket is a sparse subnetwork." in md
    assert "- second point" in md
    # time taken: 2.5 s per trajectory row (dense 9 rows, magnitude 3x4, lottery 7x5, early bird 8x5)
    _, rows = md_table(md, "time")
    assert rows == [["Step 1: dense training", "0m 22s", "22"], ["Task 2: magnitude retraining", "0m 30s", "30"],
                    ["Task 3: ticket training", "1m 28s", "88"], ["Task 4: Early-Bird retraining", "1m 40s", "100"],
                    ["total", "4m 00s", "240"]]

    # the code zip of this repository: tracked source only
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    with zipfile.ZipFile(results / "code.zip") as z:
        names = z.namelist()
    assert "train_dense.py" in names and "tests/conftest.py" in names and "requirements.txt" in names
    assert set(names) <= set(tracked)
    assert not [n for n in names if n.split("/")[0] in ("data", "checkpoints", "results", "plots")
                or n.endswith((".pt", ".zip", ".pdf"))]


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_code_zip_holds_tracked_source_only(tmp_path):
    from utils.code_zip import write_code_zip
    repo = tmp_path / "repo"
    files = {"README.md": "# x\n", "train.py": "print(1)\n", "tests/test_a.py": "def test(): pass\n",
             ".gitignore": "results/\ncheckpoints/\ndata/\n", "results/summary.csv": "a\n1\n",
             "checkpoints/dense/init.pt": "bin", "data/cifar-10-batches-py/data_batch_1": "bin",
             "scratch.py": "untracked\n", "models/weights.pt": "tracked binary"}
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    _git(repo, "init", "-q")
    _git(repo, "add", "README.md", "train.py", "tests/test_a.py", ".gitignore", "models/weights.pt")
    _git(repo, "add", "-f", "results/summary.csv")  # even a tracked result stays out
    names = write_code_zip(repo, tmp_path / "out" / "code.zip")
    with zipfile.ZipFile(tmp_path / "out" / "code.zip") as z:
        assert sorted(z.namelist()) == sorted(names) == [".gitignore", "README.md", "tests/test_a.py", "train.py"]
        assert z.read("train.py") == b"print(1)\n"
        z.extractall(tmp_path / "unpacked")
    assert (tmp_path / "unpacked" / "README.md").is_file() and (tmp_path / "unpacked" / "tests").is_dir()

    # outside git: a whitelist of source patterns, still no data, checkpoints or results
    shutil.rmtree(repo / ".git")
    names = write_code_zip(repo, tmp_path / "out" / "code2.zip")
    assert names == [".gitignore", "README.md", "scratch.py", "tests/test_a.py", "train.py"]


def report_markdown(results, tmp_path):
    """The report's text and tables (the analysis alone: no figures drawn, no PDF set)."""
    from utils.analysis import build_doc
    from utils.document import to_markdown
    return to_markdown(build_doc(Results(results), tmp_path / "none.md"), {})


def test_task2_is_compared_with_the_fine_tuned_dense_network(results, tmp_path):
    """A sparsity-0 row (the dense network fine-tuned with Task 2's schedule) adds a column and
    the comparison "does pruning improve accuracy?" against it; the figure draws it as a line."""
    from fixtures.results_tree import summary, trajectory, write_csv
    tuned = 91.5
    trajectory(results / "magnitude" / "sparsity_0" / "trajectory.csv", 3, DENSE_ACC, tuned)
    summary(results / "magnitude" / "sparsity_0" / "summary.json", tuned, DENSE_ACC, 3, lr=0.01, milestones=[2])
    write_csv(results / "magnitude" / "summary.csv", ["sparsity", "dense_acc", "pruned_acc", "retrained_acc"],
              [(0.0, DENSE_ACC, DENSE_ACC, tuned)] + [(s, DENSE_ACC, p, r) for s, p, r in MAGNITUDE])
    md = report_markdown(results, tmp_path)
    header, rows = md_table(md, "magnitude")
    assert header[-1] == "retrained - fine-tuned dense"
    assert rows[0] == ["0% (dense, fine-tuned)", "91.00", "91.00", "91.50", "+0.50", "+0.50", "+0.00"]
    assert [r[-1] for r in rows[1:]] == [f"{r - tuned:+.2f}" for _, _, r in MAGNITUDE]
    assert "against the original network: Δ = +0.20 at 50%" in md  # still said, against the original
    assert "fine-tuned with the same schedule reaches 91.50% (against the original: Δ = +0.50 points, one seed)" in md
    assert "Against the fine-tuned dense network: Δ = -0.30 at 50%, -0.90 at 70%, -3.40 at 90%" in md
    assert "Pruning is not called an improvement at any sparsity" in md
    assert "retrained vs pruned" in md and "At 0% sparsity" not in md  # no pruning at 0%: no such bullet
    _, rows = md_table(md, "task2_vs_task3")
    assert [r[0] for r in rows] == ["50%", "70%", "90%"]  # the fine-tuned dense is no pruned network

    ax = fig_accuracy_vs_sparsity(Results(results)).axes[0]
    assert _line(ax, f"dense, fine-tuned like Task 2 ({tuned:.2f}%)").get_ydata()[0] == tuned
    assert list(_line(ax, "magnitude pruned + retrained (Task 2)").get_xdata()) == [50, 70, 90]


def test_without_the_fine_tuned_dense_network_the_report_says_how_to_get_it(results, tmp_path):
    md = report_markdown(results, tmp_path)
    assert "run python prune_magnitude.py --sparsities 0 0.5 0.7 0.9 to separate the two" in md
    assert md_table(md, "magnitude")[0][-1] == "retrained - original"


def test_wide_tables_wrap_and_break_across_pages(tmp_path):
    """fpdf2 tables: a 12-column table with long cells and unbreakable words is set within the
    page (no error), and more rows flow onto more pages instead of being cut off."""
    from utils.document import Doc, Table, render_pdf, to_markdown
    columns = [f"column {i} with a long heading" for i in range(12)]

    def doc_with(n_rows):
        doc = Doc()
        doc.h1("Wide")
        doc.p("γ ε ≈ − text in DejaVu " * 40)
        rows = [[f"robustness/resnet20/ticket_pgd_mask/pgd/sparsity_{r}"] + [f"{r * i / 7:.2f}" for i in range(11)]
                for r in range(n_rows)]
        doc.table(Table("wide", "a wide table", columns, rows))
        doc.figure("absent")
        return doc

    pages = {}
    for n in (5, 200):
        doc = doc_with(n)
        with open(tmp_path / f"{n}.pdf", "wb") as f:
            pages[n], skipped = render_pdf(doc, f, lambda name: (None, f"skipped {name}"), "t")
        assert skipped == {"absent": "skipped absent"}
        assert pdf_pages(tmp_path / f"{n}.pdf") == pages[n]
    assert pages[5] == 1 and pages[200] >= 4
    md = to_markdown(doc_with(3), {})
    assert "| robustness/resnet20/ticket_pgd_mask/pgd/sparsity_2 | 0.00 | 0.29 |" in md
    assert "Figure: plots/absent.png" in md


def test_read_matrix_reads_the_layout_early_bird_writes(tmp_path):
    from utils.early_bird import write_detection
    from utils.errors import UserError
    from utils.plots import read_matrix
    dist = torch.tensor([[0.0, 0.25, 0.5], [0.25, 0.0, 0.125], [0.5, 0.125, 0.0]], dtype=torch.float64)
    write_detection({"eps": 0.1, "window": 2, "ratios": {}}, {0.3: dist}, tmp_path)
    epochs, matrix = read_matrix(tmp_path / "mask_distance_ratio_30.csv")
    assert epochs == [0, 1, 2]
    np.testing.assert_array_equal(matrix, dist.numpy())
    for text in ("0,1\n0.1,0.2\n", "epoch,0,1\n0,0.0\n1,0.1,0.0\n", "epoch,0,1\n0,0,x\n1,0,0\n",
                 "epoch,0,1\n0,0,1\n2,1,0\n"):
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(UserError, match="early_bird.py --detect-only"):
            read_matrix(tmp_path / "bad.csv")
