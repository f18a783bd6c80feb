"""The report's one rule for calling a difference between two numbers, given the seeds behind them.

Every comparison the report makes (a ticket against the original, early against late, a method
against random, ...) goes through `compare(a, b)`: `a` and `b` are per-seed values paired by
seed (`Results.per_seed(...)`), so the difference is taken within each seed and the noise that
both sides share (the dense network, the data order of that seed) cancels.

- n >= 2 paired seeds: the mean paired difference d = mean(a_i - b_i) is *called* (higher /
  lower, or the sentence's own verb) only when |d| > 2 se, se = sd(a_i - b_i) / sqrt(n) with the
  sample sd (n - 1). Otherwise the sentence says "within noise (Δ = d ± se)".
- n = 1 (one seed): the difference is reported and said to be one seed; it is never called. One
  seed gives no estimate of its own noise, and the seed-to-seed spread measured by
  bench/accuracy.py (`NOISE_SD_POINTS`) is as large as most differences the report makes, so a
  verdict word on one seed would overstate it. The sentence names that spread as the scale.
- n = 0 (no seed has both values): nothing is said but "n/a".

Threshold statements ("within 1 point of the original") use the same rule on a - b against
-margin: see `threshold`.
"""
import math
import statistics
from dataclasses import dataclass

# The scale of seed-to-seed noise on this project's default setting, for one-seed reports: the
# sample sd of the final test accuracy of our training loop over 6 seeds (0-5), 30 epochs
# (milestones 15 23) on the 5,085-image CIFAR-10 slice, 1,017 test images, measured by
# bench/accuracy.py (bench/README.md, "ours (bf16 autocast)": 67.73 ± 1.93). Full CIFAR-10 has a
# much smaller spread (the papers report ±0.2-0.3 points).
NOISE_SD_POINTS = 1.93
NOISE_SOURCE = ("bench/accuracy.py: the sd of final test accuracy over 6 seeds, 30 epochs on the "
                "5,085-image CIFAR-10 slice (bench/README.md)")

RULE = ("How differences are called: every comparison pairs the two numbers by seed (both come from "
        "the same seed's replicate) and takes the mean paired difference Δ and its standard error "
        "se = sd/√n (sample sd, n − 1) over the n seeds. A difference is called (\"higher\", "
        "\"beats\", ...) only when |Δ| > 2·se; otherwise the text says \"within noise (Δ = x ± se)\". "
        "A threshold such as \"within 1 point of the original\" is the same test of Δ against −1 point.")
ONE_SEED = (f"These results hold one seed, so no difference is called: each is reported as \"Δ = x "
            f"points, one seed\". The scale of seed-to-seed noise is the spread measured by "
            f"bench/accuracy.py, sd {NOISE_SD_POINTS:.2f} points over 6 seeds (30 epochs on the 5,085-image "
            f"slice): a one-seed difference smaller than a few points of that size may be noise. Run "
            f"python run_all.py --seeds 0 1 2 to call differences.")


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Comparison:
    """a - b over paired seeds: `diff` (mean paired difference, None for n = 0), `se` (None
    below two seeds), `n`, and `against`, the value `diff` is tested against (0, or -margin for
    a threshold)."""

    diff: float
    se: float
    n: int
    against: float = 0.0

    @property
    def one_seed(self):
        return self.n == 1

    @property
    def called(self):
        """True when the rule calls the difference: n >= 2 and |diff - against| > 2 se."""
        return self.n >= 2 and abs(self.diff - self.against) > 2 * self.se

    @property
    def direction(self):
        """+1 called above `against`, -1 called below, 0 not called (noise, one seed, no data)."""
        if not self.called:
            return 0
        return 1 if self.diff > self.against else -1

    @property
    def up(self):
        return self.direction > 0

    @property
    def down(self):
        return self.direction < 0

    def delta(self):
        """'Δ = +1.20 ± 0.35 points, n = 3'; one seed: 'Δ = +1.20 points, one seed' (the noise
        scale for one seed is named once, where the report states the rule: `ONE_SEED`)."""
        if self.n == 0:
            return "Δ = n/a (no seed has both values)"
        if self.n == 1:
            return f"Δ = {self.diff:+.2f} points, one seed"
        return f"Δ = {self.diff:+.2f} ± {self.se:.2f} points, n = {self.n}"

    def word(self, up="higher", down="lower", noise="within noise", one="one seed"):
        """The verdict word alone: `up`/`down` when called, `noise` (n >= 2) or `one` (n = 1)."""
        if self.n == 0:
            return "n/a"
        if self.n == 1:
            return one
        return up if self.up else down if self.down else noise

    def says(self, up="higher", down="lower", noise="within noise"):
        """The verdict and its numbers: 'higher (Δ = ...)', 'within noise (Δ = ...)'; one seed
        gives no verdict word, only the difference: 'Δ = +0.20 points, one seed'."""
        if self.n <= 1:
            return self.delta()
        return f"{self.word(up, down, noise)} ({self.delta()})"


def compare(a, b):
    """The rule on two lists of per-seed values paired by position (seed); a None in either
    list drops that pair. Returns a `Comparison` of a - b."""
    if len(a) != len(b):
        raise ValueError(f"compare needs values paired by seed: {len(a)} vs {len(b)}")
    diffs = [x - y for x, y in zip(a, b) if _number(x) and _number(y)]
    n = len(diffs)
    if n == 0:
        return Comparison(None, None, 0)
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(n) if n >= 2 else None
    return Comparison(mean, se, n)


def threshold(a, b, margin):
    """Is `a` within `margin` points of `b` (a >= b - margin)? The same rule on a - b tested
    against -margin instead of 0: `.up` means called within (a - b confidently above -margin),
    `.down` called more than `margin` below, neither within noise of the margin (or one seed).
    `.diff` stays a - b, so `.delta()` prints the plain difference."""
    c = compare(a, b)
    return Comparison(c.diff, c.se, c.n, against=-float(margin))


def seed_note(seeds):
    """The sentence that states the rule once, for the report's set-up: n and the seed list, or
    one seed and the noise scale."""
    if len(seeds) >= 2:
        return f"Seeds: n = {len(seeds)} ({', '.join(str(s) for s in seeds)}); tables show mean ± sd over them. " + RULE
    return ONE_SEED


def listing(items, up="higher", down="lower", noise="within noise", count_noise=False):
    """Several labelled comparisons in one phrase, grouped by verdict:
    [('50%', c1), ('90%', c2)] -> 'higher at 90% (Δ = ...); within noise at 50% (Δ = ...)'
    (called up, called down, within noise, then any with one seed only, each in the given order).
    One seed (every comparison n = 1): no verdict, the differences in a row:
    'Δ = +0.20 at 50%, -2.90 at 90% (points, one seed; seed-to-seed sd ≈ 1.93)'.
    Labels with no paired value (n = 0) are left out; '' when none is left. `count_noise`: the
    comparisons within noise are only counted ('within noise at 12 others'), for long lists whose
    numbers a table already shows."""
    items = [(label, c) for label, c in items if c.n]
    if not items:
        return ""
    if all(c.n == 1 for _, c in items):
        return ("Δ = " + ", ".join(f"{c.diff:+.2f} at {label}" for label, c in items)
                + f" (points, one seed; seed-to-seed sd ≈ {NOISE_SD_POINTS:.2f})")
    groups = {w: [] for w in (up, down, noise, "one seed only")}  # called first, then the rest
    for label, c in items:
        groups.setdefault(c.word(up, down, noise, one="one seed only"), []).append(f"{label} ({c.delta()})")
    groups = {w: parts for w, parts in groups.items() if parts}
    if count_noise and noise in groups:
        n = len(groups[noise])
        groups[noise] = [f"{n} other{'s' * (n != 1)}" if len(groups) > 1 else f"all {n}"]
    return "; ".join(f"{word} at {', '.join(parts)}" for word, parts in groups.items())
