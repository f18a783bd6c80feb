"""Figures of the three-regime phase model (three_regime.py): one figure per temperature axis.

`three_regime_<axis>`: heat maps over the grid, density (load) on x, temperature on y with the
hottest row at the top (fewest epochs / smallest batch), of the test error, the test error minus
the best at that density, mc, barrier and cka, plus the regime map. On every panel the boundary
between Regime I and Regime II is a solid line, the one between II-A and II-B a dashed line.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from utils.plots import FigureSpec, pct  # noqa: E402
from utils.plots.common import seeds_note  # noqa: E402
from utils.replicates import sd_of  # noqa: E402
from utils.three_regime import AXES, REGIMES  # noqa: E402

AXIS_LABELS = {"epochs": "dense training epochs (fewer = hotter)",
               "batch-size": "dense batch size (smaller = hotter)"}
PANELS = [("error", "test error (%)", "viridis_r"),
          ("error_gap", "test error - best at that density (points)", "magma_r"),
          ("mc", "mode connectivity mc (< 0: barrier)", "RdBu"),
          ("barrier", "loss barrier (nats)", "viridis"),
          ("cka", "CKA of the copies' outputs", "viridis")]


def summary_rows(res, axis):
    return res.csv("three_regime", axis, "summary.csv")


def grid(rows):
    """(temperatures ascending = hottest first, densities ascending, {(t, d): row})."""
    temps = sorted({r["temperature"] for r in rows})
    dens = sorted({r["density"] for r in rows})
    return temps, dens, {(r["temperature"], r["density"]): r for r in rows}


def matrices(rows):
    """{panel key: (len(temps), len(dens)) array}, NaN where a cell is missing."""
    temps, dens, cell = grid(rows)
    out = {k: np.full((len(temps), len(dens)), np.nan) for k, _, _ in PANELS}
    regimes = np.full((len(temps), len(dens)), "", dtype=object)
    robust = np.zeros((len(temps), len(dens)), dtype=bool)
    for i, t in enumerate(temps):
        for j, d in enumerate(dens):
            r = cell.get((t, d))
            if r is None:
                continue
            out["error"][i, j] = 100.0 - r["retrained_acc"]
            for k in ("mc", "barrier", "cka"):
                out[k][i, j] = np.nan if r.get(k) is None else r[k]
            regimes[i, j] = r.get("regime") or ""
            robust[i, j] = r.get("robust") == "yes"
    with np.errstate(all="ignore"):
        best = np.nanmin(out["error"], axis=0, keepdims=True) if len(temps) else 0
    out["error_gap"] = out["error"] - best
    return temps, dens, out, regimes, robust


def boundaries(regimes):
    """Cell edges where the regime changes: [((x0, x1), (y0, y1), style)], in imshow coordinates
    (cell (i, j) spans x j−½…j+½, y i−½…i+½); 'solid' between I and II, 'dashed' between II-A
    and II-B; none beside an undecided cell."""
    segments = []
    n_t, n_d = regimes.shape

    def kind(a, b):
        if a not in REGIMES or b not in REGIMES or a == b:
            return None
        return "solid" if "I" in (a, b) else "dashed"
    for i in range(n_t):
        for j in range(n_d):
            if j + 1 < n_d and (k := kind(regimes[i, j], regimes[i, j + 1])):
                segments.append(((j + 0.5, j + 0.5), (i - 0.5, i + 0.5), k))
            if i + 1 < n_t and (k := kind(regimes[i, j], regimes[i + 1, j])):
                segments.append(((j - 0.5, j + 0.5), (i + 0.5, i + 0.5), k))
    return segments


def _decorate(ax, temps, dens, regimes, axis):
    ax.set_xticks(range(len(dens)), [pct(d) for d in dens], rotation=45)
    ax.set_yticks(range(len(temps)), [f"{t:g}" for t in temps])
    ax.set_xlabel("density (conv weights kept)")
    ax.set_ylabel(AXIS_LABELS[axis])
    for xs, ys, style in boundaries(regimes):
        ax.plot(xs, ys, color="black", lw=2.2, ls="-" if style == "solid" else "--")


def three_regime_figure(axis):
    def build(res):
        rows = summary_rows(res, axis)
        if not rows:
            return None
        temps, dens, mats, regimes, robust = matrices(rows)
        _, _, cell = grid(rows)
        # several seeds: the error cells also say ± the seed-to-seed sd of the retrained accuracy
        sds = [[sd_of(cell.get((t, d)) or {}, "retrained_acc") for d in dens] for t in temps]
        error_sd = np.array([[np.nan if v is None else v for v in row] for row in sds], dtype=float)
        thresholds = res.json("three_regime", axis, "regimes.json") or {}
        fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))
        for ax, (key, title, cmap) in zip(axes.flat, PANELS):
            data = mats[key]
            kw = {}
            if key == "mc":  # centred on 0, so a barrier reads as red and a dip as blue
                lim = max(np.nanmax(np.abs(data)) if np.isfinite(data).any() else 0, 1e-6)
                kw = {"vmin": -lim, "vmax": lim}
            im = ax.imshow(data, origin="upper", cmap=cmap, aspect="auto", **kw)
            fig.colorbar(im, ax=ax, fraction=0.046)
            for (i, j), v in np.ndenumerate(data):
                if np.isfinite(v):
                    text = f"{v:.2f}" if key in ("error", "error_gap") else f"{v:.3f}"
                    if key == "error" and np.isfinite(error_sd[i, j]):
                        text += f"\n± {error_sd[i, j]:.2f}"
                    ax.text(j, i, text,
                            ha="center", va="center", fontsize=7, color="black",
                            bbox={"facecolor": "white", "alpha": 0.6, "lw": 0, "pad": 0.5})
            ax.set_title(title, fontsize=10)
            _decorate(ax, temps, dens, regimes, axis)
        ax = axes.flat[5]  # the regime map
        codes = {r: i for i, r in enumerate(REGIMES)}
        coded = np.array([[codes.get(r, np.nan) for r in row] for row in regimes], dtype=float)
        ax.imshow(coded, origin="upper", cmap=matplotlib.colors.ListedColormap(
            ["#d62728", "#ff9f1c", "#2ca02c"]), vmin=-0.5, vmax=2.5, aspect="auto")
        for (i, j), r in np.ndenumerate(regimes):  # * : the regime changes within the sensitivity grid
            label = "?" if r == "undecided" else r + ("" if robust[i, j] or not r else "*")
            ax.text(j, i, label, ha="center", va="center", fontsize=9, color="black")
        ax.set_title(f"regime (I: mc < -{thresholds.get('mc_threshold', '?')}; II-B: cka >= "
                     f"{_fmt(thresholds.get('cka_threshold'))}; *: not robust, ?: endpoint tie)", fontsize=10)
        _decorate(ax, temps, dens, regimes, axis)
        ax.plot([], [], color="black", lw=2.2, label="Regime I | II")
        ax.plot([], [], color="black", lw=2.2, ls="--", label="Regime II-A | II-B")
        ax.legend(fontsize=8, loc="lower right")
        fig.suptitle(f"Three-regime model, temperature = {axis}: where does pruning work, and why? "
                     "(hottest row at the top)" + seeds_note(res))
        fig.tight_layout()
        return fig
    return build


def _fmt(v):
    return "n/a" if v is None else f"{v:.4g}"


FIGURES = [FigureSpec(f"three_regime_{axis}", three_regime_figure(axis), f"three_regime/{axis}/summary.csv",
                      "python three_regime.py" + ("" if axis == "epochs" else f" --axis {axis}"))
           for axis in AXES]
