"""The report's noise rule (utils/noise.py): paired differences, their standard error, the 2·se
call, dropped pairs, one-seed wording and thresholds."""
import math

import pytest

from utils.noise import NOISE_SD_POINTS, ONE_SEED, RULE, compare, listing, seed_note, threshold


def test_mean_paired_difference_and_its_standard_error():
    c = compare([91.0, 92.0, 90.0], [90.0, 90.0, 90.0])  # differences 1, 2, 0
    assert c.n == 3
    assert c.diff == pytest.approx(1.0)
    assert c.se == pytest.approx(1.0 / math.sqrt(3))  # sample sd of (1, 2, 0) is 1
    assert not c.called and c.direction == 0  # 1.0 < 2 * 0.577
    assert c.delta() == "Δ = +1.00 ± 0.58 points, n = 3"
    assert c.says() == "within noise (Δ = +1.00 ± 0.58 points, n = 3)"


def test_pairing_by_seed_cancels_shared_noise():
    # both sides move together from seed to seed: unpaired they overlap, paired the gap is clear
    a, b = [80.0, 84.0, 88.0], [79.0, 83.1, 86.9]
    c = compare(a, b)
    assert c.diff == pytest.approx(1.0) and c.se == pytest.approx(0.0577350, rel=1e-5)
    assert c.called and c.up and c.says("beats", "trails") == "beats (Δ = +1.00 ± 0.06 points, n = 3)"


def test_the_two_se_boundary_both_sides():
    # differences (1 + h, 1 - h): mean 1, sd h*sqrt(2), se = h -> called iff 1 > 2h
    below = compare([1.0 + 0.49, 1.0 - 0.49], [0.0, 0.0])
    above = compare([1.0 + 0.51, 1.0 - 0.51], [0.0, 0.0])
    assert below.se == pytest.approx(0.49) and below.called and below.up
    assert above.se == pytest.approx(0.51) and not above.called
    assert below.word() == "higher" and above.word() == "within noise"
    neg = compare([0.0, 0.0], [1.49, 0.51])  # mirrored: called lower
    assert neg.diff == pytest.approx(-1.0) and neg.down and neg.word("ahead", "behind") == "behind"
    exact = compare([3.0, 1.0], [0.0, 0.0])  # diff 2, se 1: |d| = 2 se is not "more than"
    assert exact.diff == 2.0 and exact.se == pytest.approx(1.0) and not exact.called


def test_seeds_disagreeing_in_sign_are_noise():
    c = compare([92.0, 89.0], [90.0, 90.0])  # +2 and -1
    assert c.diff == pytest.approx(0.5) and c.se == pytest.approx(1.5)
    assert c.says() == "within noise (Δ = +0.50 ± 1.50 points, n = 2)"


def test_identical_differences_are_called():
    c = compare([91.0, 92.0], [90.0, 91.0])  # +1 on both seeds: se 0
    assert c.se == 0.0 and c.called and c.up


def test_none_drops_the_pair():
    c = compare([91.0, None, 93.0, 95.0], [90.0, 90.0, None, 94.0])
    assert c.n == 2 and c.diff == pytest.approx(1.0) and c.se == 0.0
    assert compare([None], [1.0]).n == 0 and compare([None], [1.0]).says() == "Δ = n/a (no seed has both values)"
    with pytest.raises(ValueError):
        compare([1.0, 2.0], [1.0])


def test_one_seed_reports_the_difference_and_names_the_noise_scale():
    c = compare([91.2], [91.0])
    assert c.one_seed and c.n == 1 and c.se is None and c.diff == pytest.approx(0.2)
    assert not c.called and c.direction == 0
    assert c.delta() == "Δ = +0.20 points, one seed"
    assert c.says("beats", "trails") == c.delta()  # no verdict word on one seed
    assert compare([50.0], [40.0]).says() == "Δ = +10.00 points, one seed"
    assert c.word() == "one seed"
    assert NOISE_SD_POINTS == 1.93 and "bench/accuracy.py" in ONE_SEED and "1.93" in ONE_SEED


def test_threshold_tests_the_difference_against_minus_the_margin():
    # a - b = -0.5 +- 0.1: confidently above -1 -> within 1 point
    inside = threshold([89.4, 89.6], [90.0, 90.0], 1.0)
    assert inside.diff == pytest.approx(-0.5) and inside.se == pytest.approx(0.1)
    assert inside.up and inside.word("within 1 point", "more than 1 point below") == "within 1 point"
    # a - b = -2.0 +- 0.1: confidently below -1
    outside = threshold([88.1, 87.9], [90.0, 90.0], 1.0)
    assert outside.down and outside.says("within", "below") == "below (Δ = -2.00 ± 0.10 points, n = 2)"
    # a - b = -1.1 +- 0.3: the margin lies inside 2 se -> noise, though the mean is past it
    edge = threshold([89.2, 88.6], [90.0, 90.0], 1.0)
    assert edge.diff == pytest.approx(-1.1) and edge.se == pytest.approx(0.3) and not edge.called
    # a plain compare of the same values would call it lower: the margin moves the test, not the diff
    assert compare([89.2, 88.6], [90.0, 90.0]).down
    assert not threshold([89.0], [90.0], 1.0).called  # one seed: never called


def test_rule_is_stated_with_n_and_the_seed_list():
    assert seed_note([0, 1, 2]).startswith("Seeds: n = 3 (0, 1, 2)")
    assert RULE in seed_note([0, 1]) and "2·se" in RULE and "within noise" in RULE
    assert seed_note([]) == ONE_SEED


def test_listing_groups_by_verdict_and_one_seed_lists_the_differences():
    items = [("50%", compare([91.0, 92.0], [90.0, 91.0])), ("70%", compare([92.0, 89.0], [90.0, 90.0])),
             ("90%", compare([80.0, 81.0], [90.0, 90.5])), ("95%", compare([None, 1.0], [1.0, None]))]
    assert listing(items, "beats it", "below it") == (
        "beats it at 50% (Δ = +1.00 ± 0.00 points, n = 2); below it at 90% (Δ = -9.75 ± 0.25 points, n = 2); "
        "within noise at 70% (Δ = +0.50 ± 1.50 points, n = 2)")
    one = [("50%", compare([91.2], [91.0])), ("90%", compare([88.1], [91.0]))]
    assert listing(one, "beats it") == f"Δ = +0.20 at 50%, -2.90 at 90% (points, one seed; seed-to-seed sd ≈ {NOISE_SD_POINTS:.2f})"
    assert listing([("x", compare([None], [None]))]) == ""


def test_listing_can_count_the_noise_group():
    items = [("a", compare([91.0, 92.0], [90.0, 91.0])), ("b", compare([92.0, 89.0], [90.0, 90.0])),
             ("c", compare([90.0, 91.0], [91.0, 89.0]))]
    assert listing(items, "more robust", count_noise=True) == \
        "more robust at a (Δ = +1.00 ± 0.00 points, n = 2); within noise at 2 others"
    assert listing(items[1:], count_noise=True) == "within noise at all 2"
