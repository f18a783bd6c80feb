"""The leaderboard section: every method the results hold, side by side at each sparsity, with
the training cost each paid (utils/leaderboard.py), as one table and two figures."""
from utils.analysis.common import acc
from utils.document import Table
from utils.plots.deploy import leaderboard_cells
from utils.plots.leaderboard import pruned_board


def accuracy_cell(e):
    """'91.20 ± 0.31' over several seeds, '91.20' for one."""
    return acc(e.acc) + (f" ± {e.sd:.2f}" if e.sd is not None else "")


def sparsity_cell(e):
    return f"{100 * e.sparsity:.1f}% (measured)" if e.measured else f"{100 * e.sparsity:g}%"


def section(doc, res):
    doc.h1("Leaderboard: every method side by side")
    board = pruned_board(res)
    if board is None:
        doc.p("No results yet (results/dense/summary.json and a pruning task's summary.csv): run "
              "python run_all.py, or python train_dense.py and any pruning script.")
        return
    seeds = (f"Accuracies are the mean ± the sample standard deviation over n = {len(res.seeds)} seeds "
             "(n in the table: the seeds that hold the run). " if res.multi_seed else
             "One seed: each accuracy is a single run, as noisy as one run is (bench/accuracy.py measures "
             "how far runs of different seeds spread); python run_all.py --seeds 0 1 2 gives error bars. ")
    doc.p("Every trained network the results hold, sorted by weight sparsity (the fraction of the "
          "prunable Conv2d/Linear weights removed: the target for masked methods, measured for the "
          "channel-pruned Early-Bird and EarlyCroP networks), with its test accuracy and the training "
          "cost its method paid. " + seeds +
          "Training cost = Σ over every training that produced the network of epochs × 3 × forward "
          "FLOPs per image of the network trained (forward + backward ≈ 3 forward passes; the number "
          "of training images is the same for every method and left out), including the dense epochs "
          "before pruning: magnitude pruning and one-shot tickets (and their controls) pay the dense "
          "run up to the checkpoint their mask came from, an IMP ticket of round k also pays every "
          "earlier round, Early-Bird pays its ticket epoch, EarlyCroP its prune epoch, pruning at "
          "initialisation nothing (its scoring passes are not counted). A masked network's FLOPs count "
          "its nonzero weights only, as the Early-Bird and EarlyCroP papers count them: per layer from "
          "sparsity_report.json where the run wrote one (Task 2, pruning at initialisation), else the "
          "overall kept fraction spread evenly over the layers (tickets, EarlyCroP-U); a channel-pruned "
          "network counts as the smaller network it is. Cost × dense: relative to training the dense "
          f"network once ({board.dense_epochs:g} epochs, {board.dense_cost / 1e9:.3g} GFLOPs per image).")
    columns = ["sparsity", "method", "test acc (%)", "n", "cost × dense", "GFLOPs / image", "from"]
    rows = [[sparsity_cell(e), e.method, accuracy_cell(e), str(e.n), f"{e.cost / board.dense_cost:.3g}",
             f"{e.cost / 1e9:.4g}", e.source] for e in board.entries]
    deployed = leaderboard_cells(res)  # deploy.py's measurements, where it ran
    if deployed:
        columns += ["CPU ms b128 (fastest form)", "peak MB", "disk MB (smallest form)"]
        rows = [row + deployed.get(e.run_summary, ["n/a"] * 3) for e, row in zip(board.entries, rows)]
    doc.table(Table("leaderboard", "Every method: test accuracy and training cost, by weight sparsity",
                    columns, rows))
    doc.figure("leaderboard_accuracy_vs_sparsity")
    doc.figure("leaderboard_accuracy_vs_cost")
    if board.missing:
        doc.p("Not in the results, so not on the leaderboard:")
        doc.bullets([f"{label}: run {command}" for label, command in board.missing])
