"""The pruning library: exact magnitude masks (ties included), scopes, composition, and masks
that hold through SGD with momentum and weight decay."""
import pytest
import torch
import torch.nn as nn

from data import CifarSplit
from models import prunable_weights
from utils.config import TrainConfig
from utils.errors import UserError
from utils.io import load_json
from utils.plots.common import collapse_note
from utils.pruning import (ScoreChoice, apply_mask, chosen_by_score, collapsed_layers, format_report,
                           global_magnitude_mask, layerwise_magnitude_mask, magnitude_choice,
                           magnitude_mask_at_sparsity, mask_facts, random_mask_like, sparsity_report,
                           weights_fingerprint)
from utils.train import SummaryFields, train_run

SPARSITIES = [0.0, 0.1, 0.25, 0.5, 0.7, 0.9, 0.95]


def tiny_net():
    """Conv (with bias) + BatchNorm + Linear: two prunable weights, plus parameters that are not."""
    return nn.Sequential(nn.Conv2d(2, 3, 3, bias=True), nn.BatchNorm2d(3), nn.Flatten(),
                         nn.Linear(3 * 2 * 2, 5))


def tied_weights(seed=0):
    """Prunable weights of tiny_net drawn from a few magnitudes with random signs: many ties."""
    net = tiny_net()
    g = torch.Generator().manual_seed(seed)
    levels = torch.tensor([0.0, 0.25, 0.5, 1.0, 2.0])
    with torch.no_grad():
        for w in prunable_weights(net).values():
            values = levels[torch.randint(0, len(levels), w.shape, generator=g)]
            signs = torch.randint(0, 2, w.shape, generator=g) * 2 - 1
            w.copy_(values * signs)
    return net


def reference_zeros(weights, k):
    """Independent top-k: sort (|w|, layer index, flat index) in Python, the k first are pruned."""
    entries = [(abs(float(v)), li, fi) for li, w in enumerate(weights.values())
               for fi, v in enumerate(w.detach().flatten().tolist())]
    return {(li, fi) for _, li, fi in sorted(entries)[:k]}


def zeros_of(mask):
    return {(li, fi) for li, m in enumerate(mask.values())
            for fi in torch.nonzero(m.flatten() == 0).flatten().tolist()}


@pytest.mark.parametrize("s", SPARSITIES)
def test_global_mask_is_exact_top_k_with_position_tie_break(s):
    weights = prunable_weights(tied_weights())
    n = sum(w.numel() for w in weights.values())
    mask = global_magnitude_mask(weights, s)
    assert list(mask) == ["0.weight", "3.weight"]  # Conv and Linear weights; no bias, no BN
    for name, m in mask.items():
        assert m.shape == weights[name].shape and m.dtype == torch.float32
        assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert sum(int((m == 0).sum()) for m in mask.values()) == round(s * n)
    assert zeros_of(mask) == reference_zeros(weights, round(s * n))
    # the same weights give the same mask, also from a copy
    again = global_magnitude_mask({k: w.clone() for k, w in weights.items()}, s)
    assert all(torch.equal(mask[k], again[k]) for k in mask)


def test_ties_at_the_threshold_are_cut_by_position():
    # 10 equal magnitudes, prune 3: exactly the first three positions go, in layer order
    weights = {"a.weight": torch.full((2, 3), -0.5), "b.weight": torch.full((4,), 0.5)}
    mask = global_magnitude_mask(weights, 0.3)
    assert mask["a.weight"].flatten().tolist() == [0, 0, 0, 1, 1, 1]
    assert mask["b.weight"].tolist() == [1, 1, 1, 1]
    # with one clearly smaller weight in the second layer it goes first, then positions
    weights["b.weight"][2] = 0.1
    mask = global_magnitude_mask(weights, 0.3)
    assert mask["a.weight"].flatten().tolist() == [0, 0, 1, 1, 1, 1]
    assert mask["b.weight"].tolist() == [1, 1, 0, 1]


def test_layerwise_prunes_each_layer_by_its_own_fraction():
    net = tied_weights(seed=1)
    with torch.no_grad():  # layer 0 much larger: a global threshold prunes layer 3 first
        net[0].weight.copy_((net[0].weight.abs() + 1) * 100)
    weights = prunable_weights(net)
    n_conv, n_lin = net[0].weight.numel(), net[3].weight.numel()  # 54, 60
    for s in SPARSITIES:
        mask = layerwise_magnitude_mask(weights, s)
        for li, (name, w) in enumerate(weights.items()):
            k = round(s * w.numel())
            assert int((mask[name] == 0).sum()) == k
            ref = reference_zeros({name: w}, k)
            assert {fi for _, fi in zeros_of({name: mask[name]})} == {fi for _, fi in ref}
        assert all(torch.equal(mask[k], magnitude_mask_at_sparsity(weights, s, "layerwise")[k]) for k in mask)
    glob = global_magnitude_mask(weights, 0.5)
    # round(0.5 * 114) = 57 zeros: all 60 linear weights are smaller, so 57 of them and no conv
    assert int((glob["0.weight"] == 0).sum()) == 0 and int((glob["3.weight"] == 0).sum()) == 57
    layer = layerwise_magnitude_mask(weights, 0.5)
    assert int((layer["0.weight"] == 0).sum()) == round(0.5 * n_conv)
    assert int((layer["3.weight"] == 0).sum()) == round(0.5 * n_lin)
    with pytest.raises(UserError, match="scope"):
        magnitude_mask_at_sparsity(weights, 0.5, "per-channel")


def test_a_later_mask_only_removes_more():
    weights = prunable_weights(tied_weights(seed=2))
    n = sum(w.numel() for w in weights.values())
    # an earlier mask that is NOT the smallest magnitudes: a random one
    earlier = random_mask_like(global_magnitude_mask(weights, 0.3), torch.Generator().manual_seed(0))
    later = global_magnitude_mask(weights, 0.6, mask=earlier)
    assert zeros_of(earlier) < zeros_of(later)
    assert len(zeros_of(later)) == round(0.6 * n)
    # the extra zeros are the smallest of the weights the earlier mask kept
    kept = {k: torch.where(earlier[k] == 1, w, torch.full_like(w, float("inf")))
            for k, w in weights.items()}
    extra = round(0.6 * n) - len(zeros_of(earlier))
    assert zeros_of(later) - zeros_of(earlier) == reference_zeros(kept, extra)
    with pytest.raises(UserError, match="only removes more"):
        global_magnitude_mask(weights, 0.2, mask=earlier)
    with pytest.raises(UserError, match="only removes more"):
        layerwise_magnitude_mask(weights, 0.0, mask=earlier)


def test_bad_sparsity_is_refused():
    weights = prunable_weights(tied_weights())
    for bad in (-0.1, 1.5):
        with pytest.raises(UserError, match="sparsity"):
            global_magnitude_mask(weights, bad)


def test_apply_mask_zeros_exactly_the_mask_and_nothing_else():
    net = tied_weights(seed=3)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01)  # no zeros before masking, so every zero after comes from the mask
    before = {k: v.clone() for k, v in net.state_dict().items()}
    mask = global_magnitude_mask(prunable_weights(net), 0.5)
    apply_mask(net, mask)
    after = net.state_dict()
    for k, v in after.items():
        if k in mask:
            assert torch.equal(v == 0, mask[k] == 0)
            assert torch.equal(v[mask[k] == 1], before[k][mask[k] == 1])
        else:  # bias, BatchNorm: untouched
            assert torch.equal(v, before[k])


def test_sparsity_report_counts():
    mask = {"a.weight": torch.tensor([[0.0, 1.0], [0.0, 0.0]]), "b.weight": torch.ones(6)}
    report = sparsity_report(mask)
    assert report["overall"] == {"total": 10, "zeros": 3, "sparsity": 0.3}
    assert report["layers"]["a.weight"] == {"total": 4, "zeros": 3, "sparsity": 0.75}
    assert report["layers"]["b.weight"]["zeros"] == 0
    text = format_report(report)
    assert "a.weight" in text and "75.00%" in text and "30.00%" in text


def test_weights_fingerprint_tells_weights_apart():
    a = tiny_net().state_dict()
    b = {k: v.clone() for k, v in a.items()}
    assert weights_fingerprint(a) == weights_fingerprint(b)
    b["3.weight"][0, 0] += 1e-6
    assert weights_fingerprint(a) != weights_fingerprint(b)


def random_split(n, seed):
    g = torch.Generator().manual_seed(seed)
    return CifarSplit(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (n,), generator=g))


def small_cnn():
    """A CIFAR-shaped network small enough to train in a blink on the CPU."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def test_momentum_and_weight_decay_leave_pruned_weights_at_zero(tmp_path):
    torch.manual_seed(0)
    start = small_cnn().state_dict()
    train, test = random_split(96, 0), random_split(32, 1)
    hp = TrainConfig(epochs=2, batch_size=16, lr=0.05, momentum=0.9, weight_decay=5e-4, milestones=())
    mask = global_magnitude_mask(prunable_weights(small_cnn()), 0.8)  # another net's mask

    def run(name, with_mask):
        model = small_cnn()
        model.load_state_dict(start)
        apply_mask(model, mask)
        train_run(model, train, test, hp, arch="small_cnn", config={"name": name},
                  ckpt_dir=tmp_path / name / "ck", results_dir=tmp_path / name / "res",
                  mask=mask if with_mask else None, save_as=[(2, "final.pt")], desc=name)
        return model, torch.load(tmp_path / name / "ck" / "final.pt", weights_only=True)

    model, ckpt = run("masked", True)
    for name, w in prunable_weights(model).items():
        pruned = mask[name] == 0
        assert pruned.any() and torch.all(w[pruned] == 0), name
        assert torch.all(ckpt["model"][name][pruned] == 0), name
        assert torch.equal(ckpt["mask"][name], mask[name])
        assert not torch.equal(w[~pruned], start[name][~pruned])  # the kept weights did train
    # control: the same start trained without the mask regrows the pruned weights (momentum,
    # decay and gradients do move them), so the check above is not vacuous
    free, _ = run("free", False)
    regrown = sum(int((w[mask[n] == 0] != 0).sum()) for n, w in prunable_weights(free).items())
    assert regrown > 0.9 * sum(int((m == 0).sum()) for m in mask.values())


# ---------------------------------------------------------------------------------------------
# Collapse facts: empty layers and the share of removals a score decided (hand-made scores).

def test_collapsed_layers_names_only_the_empty_layers():
    mask = {"conv.weight": torch.tensor([[0.0, 1.0], [0.0, 0.0]]), "fc.weight": torch.zeros(3, 2),
            "head.weight": torch.ones(2)}
    assert collapsed_layers(mask) == ["fc.weight"]
    assert mask_facts(mask, "fc.weight") == {"collapsed_layers": ["fc.weight"], "classifier_collapsed": True}
    assert mask_facts(mask, "head.weight")["classifier_collapsed"] is False
    assert collapse_note({"collapsed_layers": ["fc.weight"], "classifier_collapsed": True}) == \
        "layer collapse (classifier empty): not a test of the score"
    assert collapse_note({"collapsed_layers": ["a", "b"], "classifier_collapsed": False}) == \
        "layer collapse (2 layers empty): not a test of the score"
    assert collapse_note({"collapsed_layers": []}) == "" and collapse_note({}) == ""


def test_chosen_by_score_counts_removals_strictly_below_the_kept_cut():
    # 6 weights, 4 removed. Kept scores: 0.5, 0.9 -> cut 0.5. Removed: 0.1, 0.2 (below: decided)
    # and 0.5, 0.5 (tied with the kept 0.5: removed by position). 2 of 4 decided.
    scores = {"a": torch.tensor([0.1, 0.5, 0.9]), "b": torch.tensor([0.5, 0.2, 0.5])}
    mask = {"a": torch.tensor([0.0, 0.0, 1.0]), "b": torch.tensor([1.0, 0.0, 0.0])}
    assert chosen_by_score(scores, mask) == pytest.approx(2 / 4)
    # no tie at the cut: every removal decided
    distinct = {"a": torch.tensor([0.1, 0.3, 0.9]), "b": torch.tensor([0.5, 0.2, 0.4])}
    assert chosen_by_score(distinct, mask) == 1.0


def test_chosen_by_score_all_zero_scores_decide_nothing_and_highest_end_mirrors():
    scores = {"a": torch.zeros(4), "b": torch.zeros(2)}
    mask = {"a": torch.tensor([0.0, 0.0, 1.0, 1.0]), "b": torch.tensor([0.0, 1.0])}
    assert chosen_by_score(scores, mask) == 0.0
    # zero scores below a positive cut are decided (any tie-break removes them)
    assert chosen_by_score({"a": torch.tensor([0.0, 0.0, 1.0, 1.0]), "b": torch.tensor([0.0, 2.0])}, mask) == 1.0
    # pruning the highest: decided when strictly above the highest kept score
    high = {"a": torch.tensor([3.0, 1.0, 1.0, 0.5]), "b": torch.tensor([2.0, 0.2])}
    assert chosen_by_score(high, mask, prune_highest=True) == pytest.approx(2 / 3)
    # nothing removed: no share; nothing kept: every removal decided
    assert chosen_by_score(scores, {"a": torch.ones(4), "b": torch.ones(2)}) is None
    assert chosen_by_score(scores, {"a": torch.zeros(4), "b": torch.zeros(2)}) == 1.0


def test_score_choice_over_rounds_counts_each_round_own_removals():
    # round 1 removes a0 (0.1 < cut 0.4: decided); round 2 re-scores to all zeros and removes
    # a1, b0 (tied with the kept zeros: by position). Previously removed a0 is not counted again.
    m1 = {"a": torch.tensor([0.0, 1.0, 1.0]), "b": torch.tensor([1.0, 1.0])}
    m2 = {"a": torch.tensor([0.0, 0.0, 1.0]), "b": torch.tensor([0.0, 1.0])}
    choice = ScoreChoice()
    choice.add({"a": torch.tensor([0.1, 0.4, 0.8]), "b": torch.tensor([0.6, 0.7])}, m1)
    choice.add({"a": torch.tensor([float("-inf"), 0.0, 0.0]), "b": torch.zeros(2)}, m2, before=m1)
    assert (choice.decided, choice.removed) == (1, 3)
    assert choice.share == pytest.approx(1 / 3)


def test_layerwise_chosen_by_score_uses_each_layers_own_cut():
    # globally the cut would be 0.2 (b's kept) and a's removed 0.5 not below it; per layer a's
    # cut is 0.9 and b's 0.2, so both removals are decided
    scores = {"a": torch.tensor([0.5, 0.9]), "b": torch.tensor([0.1, 0.2])}
    mask = {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([0.0, 1.0])}
    assert chosen_by_score(scores, mask) == pytest.approx(1 / 2)
    assert ScoreChoice().add(scores, mask, layerwise=True).share == 1.0
    # magnitude: |w| is the score; a layer-wise magnitude mask of tied |w| is half by position
    weights = {"a": torch.tensor([-1.0, 1.0, 1.0, 3.0]), "b": torch.tensor([0.5, -2.0])}
    mask = layerwise_magnitude_mask(weights, 0.5)  # a: two of three |w| tied at 1 go, by position
    assert magnitude_choice(weights, mask, scope="layerwise").share == pytest.approx(1 / 3)
    assert (magnitude_choice(weights, mask, scope="layerwise").decided, magnitude_choice(weights, mask).removed) == (1, 3)


def test_train_run_summary_records_the_mask_collapse(tmp_path):
    torch.manual_seed(0)
    net = small_cnn()
    mask = {n: torch.ones_like(w) for n, w in prunable_weights(net).items()}
    mask["8.weight"] = torch.zeros_like(mask["8.weight"])  # the classifier (the last Linear)
    split = random_split(16, 0)
    hp = TrainConfig(epochs=1, batch_size=8, lr=0.01, milestones=())
    summary = train_run(net, split, split, hp, arch="small_cnn", config={}, ckpt_dir=tmp_path / "c",
                        results_dir=tmp_path / "r", mask=mask,
                        callbacks=[SummaryFields(chosen_by_score=0.25)])
    assert summary["collapsed_layers"] == ["8.weight"] and summary["classifier_collapsed"] is True
    assert summary["chosen_by_score"] == 0.25
    assert load_json(tmp_path / "r" / "summary.json")["collapsed_layers"] == ["8.weight"]
