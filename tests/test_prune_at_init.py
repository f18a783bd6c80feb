"""Pruning at initialisation: each score against a hand computation, exact counts with ties, the
SynFlow schedule, the ablations' invariants, VGG-16, bad input, and the script end to end."""
import copy
import re
import shutil
import subprocess
import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import prune_at_init
from conftest import REPO, TINY_DATA, assert_user_error, run_script
from data import CifarSplit, load_cifar10, to_pixels
from models import get_model, load_checkpoint, model_from_checkpoint, prunable_weights
from models.resnet import Normalize
from models.vgg import CifarVGG
from utils.init_pruning import (SynFlowNet, draw_score_batch, fresh_init_checkpoint, grasp_scores,
                                magnitude_scores, one_shot_mask, random_scores, shuffled,
                                snip_scores, start_model, synflow_mask, synflow_survivors)
from utils.io import load_csv, load_json, save_torch
from utils.pruning import global_count_mask, global_score_mask
from utils.train import checkpoint, cpu_generator

load = lambda p: torch.load(p, map_location="cpu", weights_only=True)  # noqa: E731
SUBSETS = ["--train-subset", 256, "--test-subset", 128]
TINY = [*TINY_DATA, *SUBSETS, "--epochs", 1, "--milestones", "--sparsities", 0, 0.9,
        "--synflow-iterations", 3, "--score-per-class", 2]


# ---------------------------------------------------------------------------------------------
# The exact global top-k over any scores.

def reference_zeros(scores, k, highest=False):
    """Independent selection: sort (±score, layer, flat index) in Python; the k first are pruned."""
    sign = -1 if highest else 1
    entries = [(sign * float(v), li, fi) for li, s in enumerate(scores.values())
               for fi, v in enumerate(s.flatten().tolist())]
    return {(li, fi) for _, li, fi in sorted(entries)[:k]}


def zeros_of(mask):
    return {(li, fi) for li, m in enumerate(mask.values())
            for fi in torch.nonzero(m.flatten() == 0).flatten().tolist()}


@pytest.mark.parametrize("highest", [False, True])
def test_global_selection_is_exact_with_ties_by_position(highest):
    g = torch.Generator().manual_seed(0)
    levels = torch.tensor([-1.0, 0.0, 0.5, 2.0])  # four values over 77 entries: many ties
    scores = {"a": levels[torch.randint(0, 4, (5, 7), generator=g)],
              "b": levels[torch.randint(0, 4, (42,), generator=g)]}
    n = 77
    for s in (0.0, 0.1, 0.33, 0.5, 0.9, 0.99):
        mask = global_score_mask(scores, s, prune_highest=highest)
        assert mask["a"].shape == (5, 7) and mask["a"].dtype == torch.float32
        assert len(zeros_of(mask)) == round(s * n)
        assert zeros_of(mask) == reference_zeros(scores, round(s * n), highest)
    # ties at the cut: all-equal scores prune the first positions, whichever end is pruned
    flat = {"a": torch.zeros(4), "b": torch.zeros(6)}
    for highest_ in (False, True):
        mask = global_count_mask(flat, 3, prune_highest=highest_)
        assert mask["a"].tolist() == [0, 0, 0, 1] and mask["b"].sum() == 6


# ---------------------------------------------------------------------------------------------
# Each score against a hand computation on a tiny network.

def tiny_batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
            "labels": torch.arange(n) % 3}


def test_random_and_magnitude_scores():
    w = {"x": torch.randn(3, 4), "y": torch.randn(5)}
    a, b, c = random_scores(w, 0), random_scores(w, 0), random_scores(w, 1)
    assert all(torch.equal(a[k], b[k]) for k in w) and not torch.equal(a["x"], c["x"])
    assert all(0 <= float(v.min()) and float(v.max()) < 1 and v.shape == w[k].shape for k, v in a.items())
    assert all(torch.equal(magnitude_scores(w)[k], w[k].abs()) for k in w)


def linear_net_and_batch():
    """A bias-free Linear(3072, 3) on the flattened tiny batch: (net, batch, x, y, W)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3072, 3, bias=False))
    batch = tiny_batch()
    return net, batch, to_pixels(batch["images"]).reshape(6, -1), batch["labels"], net[1].weight.detach()


def closed_form_grad(W, x, y):
    """∂ mean CE / ∂W of the bias-free linear net: (softmax(Wx) − onehot(y))ᵀ x / B."""
    return (F.softmax(x @ W.T, 1) - F.one_hot(y, 3).float()).T @ x / len(y)


def test_snip_is_w_times_the_closed_form_gradient():
    net, batch, x, y, W = linear_net_and_batch()
    grad = closed_form_grad(W, x, y)
    scores = snip_scores(net, batch)
    assert list(scores) == ["1.weight"]
    torch.testing.assert_close(scores["1.weight"], (W * grad).abs(), rtol=1e-4, atol=1e-9)


def small_bn_net():
    """Conv (stride 8) + BatchNorm + Linear: 96 + 320 prunable weights, small enough for a Hessian."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 2, 4, stride=8), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32, 3))


def grasp_reference(net):
    """(loss_on, w0, names): loss_on(x, y) is the GraSP loss (logits ÷ 200) as a function of the
    flattened prunable weights, with batch statistics as in train mode but without the
    running-stat updates torch.func cannot trace; w0 the weights flattened."""
    names = list(prunable_weights(net))
    shapes = [net.state_dict()[n].shape for n in names]
    sizes = [s.numel() for s in shapes]
    ref = torch.func.replace_all_batch_norm_modules_(copy.deepcopy(net)).train()
    fixed = {k: v.detach().clone() for k, v in ref.named_parameters() if k not in names}

    def loss_on(x, y):
        def loss_of(flat):
            ws = {n: p.view(s) for n, p, s in zip(names, torch.split(flat, sizes), shapes)}
            return F.cross_entropy(torch.func.functional_call(ref, {**fixed, **ws}, (x,)) / 200, y)
        return loss_of

    return loss_on, torch.cat([net.state_dict()[n].flatten() for n in names]).detach(), names


def test_grasp_hg_equals_torch_func_hessian_times_gradient():
    net, batch = small_bn_net(), tiny_batch()
    buffers_before = {k: v.clone() for k, v in net.state_dict().items()}
    scores = grasp_scores(net, batch)
    # the network scored is a copy: the caller's weights and BatchNorm buffers are untouched
    assert all(torch.equal(v, buffers_before[k]) for k, v in net.state_dict().items())

    loss_on, w0, names = grasp_reference(net)
    loss_of = loss_on(to_pixels(batch["images"]).contiguous(), batch["labels"])
    g = torch.func.grad(loss_of)(w0)
    hessian = torch.func.hessian(loss_of)(w0)
    want = -w0 * (hessian @ g)
    got = torch.cat([scores[n].flatten() for n in names])
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-12)
    assert want.abs().max() > 0
    # GraSP prunes the highest scores; inverted, the lowest
    m = one_shot_mask("grasp", scores, 0.5)
    assert zeros_of(m) == reference_zeros(scores, round(0.5 * got.numel()), highest=True)
    m = one_shot_mask("grasp", scores, 0.5, invert=True)
    assert zeros_of(m) == reference_zeros(scores, round(0.5 * got.numel()), highest=False)


def test_snip_with_pieces_averages_each_pieces_mean_gradient():
    # 6 images in pieces of 4 and 2: ∂L/∂W = ½ (g₁ + g₂), each g the closed form on its piece
    # (Synaptic-Flow accumulates one backward per batch); the pieces weigh equally, not by size
    net, batch, x, y, W = linear_net_and_batch()
    grad = (closed_form_grad(W, x[:4], y[:4]) + closed_form_grad(W, x[4:], y[4:])) / 2
    torch.testing.assert_close(snip_scores(net, batch, batch_size=4)["1.weight"], (W * grad).abs(),
                               rtol=1e-4, atol=1e-9)
    assert not torch.allclose(snip_scores(net, batch, batch_size=4)["1.weight"],
                              snip_scores(net, batch)["1.weight"])
    # one piece holding every image is the one-pass score
    torch.testing.assert_close(snip_scores(net, batch, batch_size=6)["1.weight"], snip_scores(net, batch)["1.weight"])


def test_grasp_with_pieces_averages_g_then_each_pieces_hessian_product():
    # Wang et al.'s GraSP.py: g = the pieces' gradients together (detached), then Hg from each
    # piece's ∂(gᵀ ∂L_piece/∂w)/∂w; here averaged, so the reference is mean_k H_k · mean_k g_k
    net, batch = small_bn_net(), tiny_batch()
    scores = grasp_scores(net, batch, batch_size=4)
    loss_on, w0, names = grasp_reference(net)
    x, y = to_pixels(batch["images"]).contiguous(), batch["labels"]
    pieces = [loss_on(x[:4], y[:4]), loss_on(x[4:], y[4:])]
    g = sum(torch.func.grad(f)(w0) for f in pieces) / 2
    hg = sum(torch.func.hessian(f)(w0) @ g for f in pieces) / 2
    got = torch.cat([scores[n].flatten() for n in names])
    torch.testing.assert_close(got, -w0 * hg, rtol=1e-3, atol=1e-12)
    one_pass = torch.cat([v.flatten() for v in grasp_scores(net, batch).values()])
    assert not torch.allclose(got, one_pass, rtol=1e-3, atol=1e-12)  # the pieces' statistics differ


def chain_net():
    """Normalize → Flatten → Linear(3072, 4) → Linear(4, 3), no biases: SynFlow in closed form."""
    torch.manual_seed(2)
    return nn.Sequential(Normalize(), nn.Flatten(), nn.Linear(3072, 4, bias=False), nn.Linear(4, 3, bias=False))


def test_synflow_on_a_linear_chain_matches_the_closed_form():
    net = chain_net()
    W1, W2 = (net[i].weight.detach().double().abs() for i in (2, 3))
    # R = 1ᵀ|W2||W1|1 on an all-ones input (normalisation set to the identity):
    # ∂R/∂W1[i,j] = Σ_k |W2|[k,i];  ∂R/∂W2[k,i] = Σ_j |W1|[i,j]
    want1 = W1 * W2.sum(0)[:, None]
    want2 = W2 * W1.sum(1)[None, :]
    scores = SynFlowNet(net).scores()
    torch.testing.assert_close(scores["2.weight"], want1, rtol=1e-12, atol=0)
    torch.testing.assert_close(scores["3.weight"], want2, rtol=1e-12, atol=0)
    # with a mask the pruned weights leave the flow
    mask = {"2.weight": torch.ones(4, 3072), "3.weight": torch.ones(3, 4)}
    mask["2.weight"][1] = 0  # row 1 of W1 pruned: hidden unit 1 gets no input
    scores = SynFlowNet(net).scores(mask)
    assert torch.all(scores["2.weight"][1] == 0) and torch.all(scores["3.weight"][:, 1] == 0)
    torch.testing.assert_close(scores["3.weight"][:, 0], W2[:, 0] * W1[0].sum(), rtol=1e-12, atol=0)
    assert next(net.parameters()).dtype == torch.float32  # the init itself is untouched


def test_synflow_schedule_and_rounds():
    assert synflow_survivors(1000, 0.9, 4) == [round(1000 * 0.1 ** (k / 4)) for k in (1, 2, 3)] + [100]
    assert synflow_survivors(1000, 0.9, 1) == [100]
    # the last round is exactly N − round(s·N), also where round(N(1−s)) would differ
    assert synflow_survivors(7, 0.5, 3)[-1] == 7 - round(3.5)
    s = synflow_survivors(10_000, 0.98, 100)
    assert len(s) == 100 and all(a >= b for a, b in zip(s, s[1:])) and s[-1] == 200

    net = chain_net()
    n = 3072 * 4 + 12
    for invert in (False, True):
        mask, last = synflow_mask(net, 0.9, 5, invert=invert)
        assert len(zeros_of(mask)) == round(0.9 * n)
        # reference loop: each round re-scores the masked net; earlier zeros stay zeros
        flow, ref = SynFlowNet(net), None
        for alive in synflow_survivors(n, 0.9, 5):
            scores = flow.scores(ref)
            ranked = {k: v.clone() for k, v in scores.items()}
            if ref is not None:
                for k in ranked:
                    ranked[k][ref[k] == 0] = float("inf") if invert else float("-inf")
            new = global_count_mask(ranked, n - alive, prune_highest=invert)
            if ref is not None:
                assert zeros_of(ref) <= zeros_of(new)  # pruned weights stay pruned
            ref = new
        assert zeros_of(mask) == zeros_of(ref)
        assert all(torch.equal(last[k], scores[k]) for k in last)
    # inverted, every round removes the highest-scoring survivors: K=1 is the one-shot top end
    one, scores = synflow_mask(net, 0.5, 1, invert=True)
    assert zeros_of(one) == reference_zeros(SynFlowNet(net).scores(), round(0.5 * n), highest=True)


# ---------------------------------------------------------------------------------------------
# The score batch and the ablations.

def test_score_batch_is_a_seeded_per_class_draw_of_training_images():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.arange(60) % 10
    split = CifarSplit(images, labels)
    batch = draw_score_batch(split, 3, seed=0)
    assert torch.bincount(batch["labels"], minlength=10).tolist() == [3] * 10
    assert torch.equal(batch["images"], images[batch["indices"]])
    assert torch.equal(batch["labels"], labels[batch["indices"]])
    assert batch["images"].dtype == torch.uint8 and len(set(batch["indices"].tolist())) == 30
    assert torch.equal(draw_score_batch(split, 3, seed=0)["indices"], batch["indices"])
    assert not torch.equal(draw_score_batch(split, 3, seed=1)["indices"], batch["indices"])
    from utils.errors import UserError
    with pytest.raises(UserError, match="score-per-class"):
        draw_score_batch(split, 7, seed=0)


def test_ablation_invariants():
    weights = prunable_weights(get_model("resnet20"))
    scores = magnitude_scores(weights)
    masks = {s: one_shot_mask("magnitude", scores, s) for s in (0.3, 0.6, 0.9)}
    assert zeros_of(masks[0.3]) < zeros_of(masks[0.6]) < zeros_of(masks[0.9])  # nested
    for s in (0.6, 0.9):  # inverted and original kept sets are disjoint at s >= 0.5
        inv = one_shot_mask("magnitude", scores, s, invert=True)
        assert not any(bool((masks[s][k] * inv[k]).any()) for k in inv)
        assert len(zeros_of(inv)) == len(zeros_of(masks[s]))
    shuf = shuffled(masks[0.9], cpu_generator(0, "shuffle"))
    again = shuffled(masks[0.9], cpu_generator(0, "shuffle"))
    for k, m in masks[0.9].items():
        assert int((shuf[k] == 0).sum()) == int((m == 0).sum())  # same per-layer count
        assert torch.equal(shuf[k], again[k])
    assert zeros_of(shuf) != zeros_of(masks[0.9])
    init = fresh_init_checkpoint("resnet20", 0)
    fresh = start_model(init, masks[0.9], "reinit", seed=0, device="cpu")
    same = start_model(init, masks[0.9], "original", seed=0, device="cpu")
    for k, m in masks[0.9].items():
        w_fresh, w_same = fresh.state_dict()[k], same.state_dict()[k]
        assert torch.equal(w_same, init["model"][k] * m)
        assert torch.all(w_fresh[m == 0] == 0) and not torch.equal(w_fresh, w_same)


# ---------------------------------------------------------------------------------------------
# VGG-16 (OpenLTH's CIFAR VGG-16-BN).

def test_vgg16_matches_openlth_and_rebuilds_from_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = get_model("vgg16")
    assert isinstance(model, CifarVGG)
    weights = prunable_weights(model)
    convs = [w for w in weights.values() if w.dim() == 4]
    assert [w.shape[0] for w in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert list(weights)[-1] == "fc.weight" and weights["fc.weight"].shape == (10, 512)
    # 13 convs with bias, their BatchNorms, the classifier: 14,728,266 parameters
    n = sum(w.numel() + w.shape[0] * 3 for w in convs) + 512 * 10 + 10
    assert sum(p.numel() for p in model.parameters()) == n == 14_728_266
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    bns = [m.requires_grad_(False) for m in bns]
    assert all(0 <= float(b.weight.min()) and float(b.weight.max()) <= 1 and not b.bias.any() for b in bns)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    save_torch(checkpoint(model, "vgg16", 0, {"shortcut": "B"}), tmp_path / "init.pt")
    again, ckpt = load_checkpoint(tmp_path / "init.pt")
    assert isinstance(again, CifarVGG) and ckpt["arch"] == "vgg16"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in again.state_dict().items())


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written.

def in_process(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        prune_at_init.main([str(a) for a in args])
    return subprocess.CompletedProcess(args, exit_info.value.code, "", capsys.readouterr().err)


def test_bad_input_exits_with_one_line(tmp_path, capsys, tiny_dense):
    out = ["--checkpoint-dir", tmp_path / "c", "--results-dir", tmp_path / "r"]
    init = ["--init", tiny_dense["run"] / "init.pt"]
    cases = [
        ([*init, "--methods", "snip", "obd"], ["--methods", "'obd'"]),
        ([*init, "--ablations", "flip"], ["--ablations", "'flip'"]),
        ([*init, "--sparsities", 0.5, 1.0], ["--sparsities", "1.0"]),
        ([*init, "--synflow-iterations", 0], ["--synflow-iterations", "0"]),
        ([*init, "--score-per-class", 0], ["--score-per-class"]),
        ([*init, "--arch", "resnet20"], ["--init", "--arch"]),
        (["--arch", "resnet99"], ["--arch", "resnet99"]),
        (["--init", tmp_path / "none.pt"], ["none.pt", "python train_dense.py"]),
        (["--init", tiny_dense["run"] / "epoch_003.pt"], ["epoch_003.pt", "not an initialisation", "epoch 3"]),
        ([], [str(tmp_path / "c" / "dense" / "init.pt"), f"--checkpoint-dir {tmp_path / 'c'}"]),
        ([*init, "--methods", "snip", "--score-per-class", 30], ["--score-per-class 30", "fewer"]),
    ]
    for args, words in cases:
        assert_user_error(in_process(capsys, *TINY_DATA, *SUBSETS, *out, *args), *words)
    assert not (tmp_path / "r").exists()
    proc = run_script("prune_at_init.py", *TINY_DATA, *out, "--methods", "magic", check=False)
    assert_user_error(proc, "--methods")


# ---------------------------------------------------------------------------------------------
# The script end to end on the real slice.

@pytest.fixture(scope="module")
def pai(tiny_dense, tmp_path_factory):
    root = tmp_path_factory.mktemp("pai")
    args = [*TINY, "--init", tiny_dense["run"] / "init.pt", "--methods", "snip", "grasp", "synflow",
            "--checkpoint-dir", root / "c", "--results-dir", root / "r"]
    t0 = time.perf_counter()
    proc = run_script("prune_at_init.py", *args)
    seconds = time.perf_counter() - t0
    print(f"prune_at_init end to end: {seconds:.1f} s")
    return {"args": args, "ck": root / "c" / "prune_at_init", "res": root / "r" / "prune_at_init",
            "init": load(tiny_dense["run"] / "init.pt"), "root": root, "proc": proc,
            "tiny_dense": tiny_dense}


def test_script_summary_and_files(pai):
    rows = load_csv(pai["res"] / "summary.csv")
    header = (pai["res"] / "summary.csv").read_text().splitlines()[0]
    assert header == ("method,ablation,sparsity,start_acc,final_acc,zeros,prunable,epochs,score_seconds,"
                      "collapsed_layers,classifier_collapsed,chosen_by_score")
    n = sum(w.numel() for w in prunable_weights(model_from_checkpoint(pai["init"])).values())
    keys = [(r["method"], r["ablation"], float(r["sparsity"])) for r in rows]
    assert keys == [("none", "original", 0.0)] + [(m, a, 0.9) for m in ("snip", "grasp", "synflow")
                                                   for a in ("original", "shuffle", "reinit", "invert")]
    for r in rows:
        folder = f"{r['method']}/{r['ablation']}/sparsity_{100 * float(r['sparsity']):g}"
        assert int(r["prunable"]) == n and int(r["epochs"]) == 1
        assert int(r["zeros"]) == round(float(r["sparsity"]) * n)
        summary = load_json(pai["res"] / folder / "summary.json")
        assert float(r["final_acc"]) == pytest.approx(summary["test_acc"], abs=1e-4)
        assert float(r["start_acc"]) == pytest.approx(summary["start_test_acc"], abs=1e-4)
        report = load_json(pai["res"] / folder / "sparsity_report.json")
        assert report["overall"]["zeros"] == int(r["zeros"])
        assert (pai["res"] / folder / "trajectory.csv").is_file()
        assert float(r["score_seconds"]) >= 0 and (float(r["score_seconds"]) > 0) == (r["method"] != "none")
        init, mask = pai["init"]["model"], load(pai["ck"] / folder / "mask.pt")
        start, final = load(pai["ck"] / folder / "start.pt"), load(pai["ck"] / folder / "final.pt")
        assert start["epoch"] == 0 and final["epoch"] == 1
        for name, m in mask.items():
            assert torch.all(final["model"][name][m == 0] == 0)  # pruned weights stay exactly zero
        if r["ablation"] != "reinit":  # start = init × mask exactly, every other tensor from the init
            for name, v in start["model"].items():
                assert torch.equal(v, init[name] * mask[name] if name in mask else init[name]), name
    batch = load(pai["ck"] / "score_batch.pt")
    train, _ = load_cifar10(TINY_DATA[1], False, 256, 128)
    assert int(batch["indices"].max()) < 256  # training images of the subset only
    assert torch.equal(batch["images"], train.images[batch["indices"]])
    assert torch.equal(batch["labels"], train.labels[batch["indices"]])
    assert torch.bincount(batch["labels"], minlength=10).tolist() == [2] * 10


def test_script_masks_are_the_exact_selection_of_their_scores(pai):
    init_model = model_from_checkpoint(pai["init"])
    batch = load(pai["ck"] / "score_batch.pt")
    for method, recompute in (("snip", snip_scores), ("grasp", grasp_scores)):
        saved = load(pai["ck"] / method / "scores.pt")
        again = recompute(init_model, batch)
        assert list(saved) == list(prunable_weights(init_model))
        for k in saved:
            torch.testing.assert_close(saved[k], again[k], rtol=1e-5, atol=1e-12)
        original = load(pai["ck"] / method / "original" / "sparsity_90" / "mask.pt")
        inverted = load(pai["ck"] / method / "invert" / "sparsity_90" / "mask.pt")
        assert zeros_of(original) == zeros_of(one_shot_mask(method, saved, 0.9))
        assert zeros_of(inverted) == zeros_of(one_shot_mask(method, saved, 0.9, invert=True))
        assert not any(bool((original[k] * inverted[k]).any()) for k in original)  # disjoint kept sets
        shuffle = load(pai["ck"] / method / "shuffle" / "sparsity_90" / "mask.pt")
        reinit = load(pai["ck"] / method / "reinit" / "sparsity_90" / "mask.pt")
        assert all(int((shuffle[k] == 0).sum()) == int((original[k] == 0).sum()) for k in original)
        assert zeros_of(shuffle) != zeros_of(original)
        assert zeros_of(reinit) == zeros_of(original)
        start = load(pai["ck"] / method / "reinit" / "sparsity_90" / "start.pt")["model"]
        assert all(torch.all(start[k][reinit[k] == 0] == 0) for k in reinit)
        assert not any(torch.equal(start[k], pai["init"]["model"][k] * reinit[k]) for k in reinit)
    for invert, ablation in ((False, "original"), (True, "invert")):
        mask = load(pai["ck"] / "synflow" / ablation / "sparsity_90" / "mask.pt")
        want, _ = synflow_mask(init_model, 0.9, 3, invert=invert)
        assert zeros_of(mask) == zeros_of(want)


def test_script_reruns_skip_synflow_ignores_data_and_settings_are_checked(pai, capsys):
    # the same command again: every run is finished, nothing is retrained, scored or written
    before = file_stamps(pai["ck"], pai["res"])
    proc = run_script("prune_at_init.py", *pai["args"])
    assert proc.stderr.count("finished already") == 13 and "13 finished already" in proc.stdout
    assert file_stamps(pai["ck"], pai["res"]) == before  # every file: scores, masks, summaries, tables
    # One saved mask has a near-tie flipped, as SNIP scores recomputed with another thread count
    # can have: a finished run keeps its own mask and is not refused (its inputs are pinned by
    # its config).
    mask_path = pai["ck"] / "snip" / "original" / "sparsity_90" / "mask.pt"
    saved = mask_path.read_bytes()
    flipped = load(mask_path)
    name = next(iter(flipped))
    flipped[name].view(-1)[0] = 1 - flipped[name].view(-1)[0]
    torch.save(flipped, mask_path)
    before = {p: p.stat().st_mtime_ns for p in [*pai["res"].rglob("summary.json"), *pai["ck"].rglob("mask.pt")]}
    try:
        proc = run_script("prune_at_init.py", *pai["args"])
    finally:
        after = {p: p.stat().st_mtime_ns for p in [*pai["res"].rglob("summary.json"), *pai["ck"].rglob("mask.pt")]}
        mask_path.write_bytes(saved)
    assert proc.stderr.count("finished already") == 13
    assert after == before
    # SynFlow reads no data: another --train-subset gives the same masks
    other = pai["root"] / "other"
    run_script("prune_at_init.py", *TINY_DATA, "--train-subset", 128, "--test-subset", 64, "--epochs", 0,
               "--milestones", "--sparsities", 0.9, "--synflow-iterations", 3, "--methods", "synflow",
               "--ablations", "original", "invert", "--init", pai["tiny_dense"]["run"] / "init.pt",
               "--checkpoint-dir", other / "c", "--results-dir", other / "r")
    for ablation in ("original", "invert"):
        a = load(pai["ck"] / "synflow" / ablation / "sparsity_90" / "mask.pt")
        b = load(other / "c" / "prune_at_init" / "synflow" / ablation / "sparsity_90" / "mask.pt")
        assert all(torch.equal(a[k], b[k]) for k in a)
    # a finished run made with other settings: refused before any work
    args = [str(a) for a in pai["args"]]
    args[args.index("--score-per-class") + 1] = "3"
    proc = in_process(capsys, *args)
    assert_user_error(proc, "other settings", "score_per_class", "--force")


def file_stamps(*roots):
    """{path: (mtime, bytes)} of every file under `roots`."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for root in roots for p in root.rglob("*") if p.is_file()}


def test_scores_are_kept_with_their_settings_and_reused_by_new_runs(pai, tmp_path):
    # a copy of the finished command's folders, so the module's other tests see them unchanged
    root = tmp_path / "copy"
    shutil.copytree(pai["root"] / "c", root / "c")
    shutil.copytree(pai["root"] / "r", root / "r")
    ck = root / "c" / "prune_at_init"
    meta = load_json(ck / "snip" / "scores.json")
    assert meta["settings"]["score_per_class"] == 2 and meta["settings"]["method"] == "snip"
    assert meta["seconds"]["scores"] > 0 and set(load_json(ck / "synflow" / "scores.json")["seconds"]) == {
        "sparsity_90", "sparsity_90_invert"}
    # the kept scores stand in for what the next computation would give: replace SNIP's by other
    # values; a new sparsity with the same settings must prune by them, not by fresh scores
    fake = {k: torch.rand(v.shape, generator=torch.Generator().manual_seed(1)) for k, v in load(ck / "snip" / "scores.pt").items()}
    torch.save(fake, ck / "snip" / "scores.pt")
    kept_files = [ck / m / f for m in ("snip", "grasp", "synflow") for f in ("scores.pt", "scores.json")]
    kept = file_stamps(*kept_files[:-1], ck / "score_batch.pt")
    synflow_seconds = load_json(ck / "synflow" / "scores.json")["seconds"]
    args = [str(a) for a in pai["args"]]
    i = args.index("--sparsities")
    args[i + 1:i + 3] = ["0", "0.5", "0.9"]
    args[args.index("--checkpoint-dir") + 1], args[args.index("--results-dir") + 1] = str(root / "c"), str(root / "r")
    proc = run_script("prune_at_init.py", *args, "--ablations", "original", "invert")
    assert "13 subnetworks" in proc.stdout and "7 finished already" in proc.stdout
    assert file_stamps(*kept_files[:-1], ck / "score_batch.pt") == kept  # (SynFlow's seconds grew)
    new_mask = load(ck / "snip" / "original" / "sparsity_50" / "mask.pt")
    assert zeros_of(new_mask) == zeros_of(one_shot_mask("snip", fake, 0.5))
    # SynFlow's masks at the new sparsity joined the kept ones; the old ones were not recomputed
    masks = load(ck / "synflow" / "masks.pt")
    assert set(masks) == {"sparsity_50", "sparsity_50_invert", "sparsity_90", "sparsity_90_invert"}
    assert load_json(ck / "synflow" / "scores.json")["seconds"].items() >= synflow_seconds.items()


def test_fresh_arch_init_is_the_dense_init_bit_for_bit(tiny_dense):
    fresh = fresh_init_checkpoint("resnet20", 0)["model"]
    saved = load(tiny_dense["run"] / "init.pt")["model"]
    assert fresh.keys() == saved.keys() and all(torch.equal(fresh[k], saved[k]) for k in saved)


def test_every_help_flag_is_documented(capsys):
    page = (REPO / "docs" / "prune_at_init.md").read_text()
    with pytest.raises(SystemExit):
        prune_at_init.parse_args(["--help"])
    flags = set(re.findall(r"(--[a-z][a-z0-9-]+)", capsys.readouterr().out))
    assert len(flags) > 15
    missing = sorted(f for f in flags if f"`{f}" not in page)
    assert not missing, missing


def test_figures_and_report_section_read_the_results(pai):
    import matplotlib.pyplot as plt

    from utils.analysis.prune_at_init import section
    from utils.plots import Results
    from utils.plots.prune_at_init import FIGURES
    from utils.document import Doc

    res = Results(pai["root"] / "r")
    for spec in FIGURES:
        fig = spec.build(res)
        assert fig is not None, spec.name
        plt.close(fig)
    empty = Results(pai["root"] / "nothing")
    assert all(spec.build(empty) is None for spec in FIGURES)
    doc = Doc()
    section(doc, res)
    table = doc.tables["prune_at_init"]
    rows = load_csv(pai["res"] / "summary.csv")
    want = []
    for m, name in (("snip", "SNIP"), ("grasp", "GraSP"), ("synflow", "SynFlow")):
        acc = {r["ablation"]: f"{float(r['final_acc']):.2f}" for r in rows if r["method"] == m}
        want.append([name, "90%", acc["original"], acc["shuffle"], acc["reinit"], acc["invert"]])
    assert [r[:6] for r in table.rows] == want
    text = " ".join(str(b[1]) for b in doc.blocks)
    dense = next(float(r["final_acc"]) for r in rows if r["method"] == "none")
    assert f"{dense:.2f}%" in text and "No random baseline" in text
    snip = {r["ablation"]: float(r["final_acc"]) for r in rows if r["method"] == "snip"}
    # one seed: the difference and "one seed", no verdict word (utils/noise.py)
    assert f"invert changes it (mean vs original: Δ = {snip['invert'] - snip['original']:+.2f} points, one seed)" in text
    doc = Doc()
    section(doc, empty)
    assert "run python prune_at_init.py" in " ".join(str(b[1]) for b in doc.blocks)


# ---------------------------------------------------------------------------------------------
# Layer collapse is measured: inverted SynFlow empties the classifier, SynFlow and magnitude do not.

@pytest.fixture(scope="module")
def collapse_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("collapse")
    run_script("prune_at_init.py", *TINY_DATA, "--train-subset", 64, "--test-subset", 64, "--epochs", 0,
               "--milestones", "--sparsities", 0.3, 0.9, "--methods", "magnitude", "synflow",
               "--ablations", "original", "invert", "--arch", "resnet20",  # SynFlow's 100 rounds
               "--checkpoint-dir", root / "c", "--results-dir", root / "r")
    return {"res": root / "r" / "prune_at_init", "ck": root / "c" / "prune_at_init"}


def test_inverted_synflow_collapses_and_is_chosen_by_position(collapse_run):
    res, ck = collapse_run["res"], collapse_run["ck"]
    rows = {(r["method"], r["ablation"], float(r["sparsity"])): r for r in load_csv(res / "summary.csv")}
    for method, ablation, s in rows:
        folder = f"{method}/{ablation}/sparsity_{100 * s:g}"
        summary = load_json(res / folder / "summary.json")
        mask = load(ck / folder / "mask.pt")
        empty = [n for n, m in mask.items() if int(m.sum()) == 0]  # observed on the saved mask
        assert summary["collapsed_layers"] == empty
        assert rows[method, ablation, s]["collapsed_layers"] == ";".join(empty)
        assert float(rows[method, ablation, s]["chosen_by_score"]) == pytest.approx(summary["chosen_by_score"])
    for s in (0.3, 0.9):
        inverted = load_json(res / f"synflow/invert/sparsity_{100 * s:g}/summary.json")
        assert "linear.weight" in inverted["collapsed_layers"] and inverted["classifier_collapsed"]
    assert load_json(res / "synflow/invert/sparsity_90/summary.json")["chosen_by_score"] < 0.2
    for method in ("synflow", "magnitude"):
        summary = load_json(res / f"{method}/original/sparsity_90/summary.json")
        assert summary["collapsed_layers"] == [] and not summary["classifier_collapsed"]
        assert summary["chosen_by_score"] == pytest.approx(1.0, abs=1e-3)
    # magnitude's share from its definition: removed |w| strictly below the smallest kept |w|
    init = fresh_init_checkpoint("resnet20", 0)["model"]
    mask = load(ck / "magnitude/original/sparsity_90/mask.pt")
    w = torch.cat([init[n].abs().flatten() for n in mask])
    keep = torch.cat([mask[n].flatten() for n in mask]) == 1
    want = int((w[~keep] < w[keep].min()).sum()) / int((~keep).sum())
    assert load_json(res / "magnitude/original/sparsity_90/summary.json")["chosen_by_score"] == pytest.approx(want)


def test_report_calls_a_collapsed_comparison_no_test_of_the_score(collapse_run):
    import matplotlib.pyplot as plt

    from utils.analysis.prune_at_init import section
    from utils.document import Doc
    from utils.plots import Results
    from utils.plots.prune_at_init import fig_ablations

    res = Results(collapse_run["res"].parent)
    doc = Doc()
    section(doc, res)
    text = " ".join(str(b[1]) for b in doc.blocks)
    # the invert ablation of SynFlow is no comparison at either sparsity; magnitude's still is
    assert ("SynFlow: invert: 30%: layer collapse (classifier empty): not a test of the score; "
            "90%: layer collapse (classifier empty): not a test of the score") in text
    assert "magnitude: invert changes it" in text
    assert "found inverted SynFlow as accurate as the original; that is not a result to agree with" in text
    masks = {(r[0], r[1]): r for r in doc.tables["prune_at_init_masks"].rows}
    inverted = load_json(collapse_run["res"] / "synflow/invert/sparsity_90/summary.json")
    assert masks["SynFlow", "90%"][5] == (f"{inverted['chosen_by_score']:.3f}, classifier + "
                                          f"{len(inverted['collapsed_layers']) - 1} empty")
    assert masks["SynFlow", "90%"][2] == masks["magnitude", "90%"][2] == "1.000"
    fig = fig_ablations(res)
    assert "layer collapse: not a test of the score" in fig.axes[1].get_legend_handles_labels()[1]
    plt.close(fig)


def test_snip_and_grasp_score_with_tf32_off_and_restore_it():
    # cuDNN's default TF32 convolutions would change the scores on a GPU: every forward pass of a
    # scoring runs with TF32 off, and the caller's settings come back afterwards
    net, batch = small_bn_net(), tiny_batch()
    seen = []
    net[0].register_forward_hook(lambda *_: seen.append(
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)))
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        snip_scores(net, batch)
        grasp_scores(net, batch, batch_size=4)
        after = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert len(seen) == 1 + 4 and set(seen) == {(False, False)}
    assert after == (True, True)
