"""The deployed section: does pruning make the network faster or smaller on this hardware, and by
how much — measured latency, memory and disk (deploy.py) beside accuracy, FLOPs and training cost."""
from utils.analysis.common import acc
from utils.document import Table
from utils.plots.deploy import deploy_rows, measured
from utils.plots.leaderboard import pruned_board

# A timing is called faster / slower than dense only beyond this fraction: timings are the noisy
# column (docs/deploy.md); disk and memory are exact and reported as measured.
TIMING_MARGIN = 0.10
MIN_REPEATS = 5  # fewer timed passes (the smoke preset's 1) are shown but never called
RUNNABLE = ("dense", "compact", "dense_zeros", "sparse_mm", "semi_structured_24")


def verdict(speedup, repeats):
    if speedup is None:
        return "n/a"
    if not repeats or repeats < MIN_REPEATS:
        return f"{speedup:.2f}× (not called: {repeats:g} timed pass(es))"
    if speedup > 1 + TIMING_MARGIN:
        return f"faster ({speedup:.2f}×)"
    if speedup < 1 - TIMING_MARGIN:
        return f"slower ({speedup:.2f}×)"
    return f"no change beyond ±{100 * TIMING_MARGIN:.0f}% ({speedup:.2f}×)"


def _ratio(v, ref):
    return None if v is None or not ref else v / ref


def _cell(v, fmt="{:.3g}"):
    return "n/a" if v is None else fmt.format(v)


def section(doc, res):
    doc.h1("Deployed: does pruning make the network faster or smaller?")
    board = pruned_board(res)
    rows = deploy_rows(res)
    if board is None or not rows:
        doc.p("No measurements yet (results/deploy/summary.csv): run python deploy.py after the pruning "
              "scripts (python run_all.py runs it).")
        return
    cpu = measured(res, "cpu")
    stored = {}
    for r in rows:
        if r.get("device") == "cpu" and isinstance(r.get("disk_mb"), float):
            stored.setdefault(r["source"], {})[r["form"]] = r
    dense = next((e for e in board.entries if e.family == "dense"), None)
    dense_row = (cpu.get(dense.run_summary) or {}).get("dense") if dense else None
    dense_disk = dense_row.get("disk_mb") if dense_row else None
    if not cpu:
        doc.p("results/deploy/summary.csv holds no CPU timings: run python deploy.py --force.")
        return
    any_row = next(iter(next(iter(cpu.values())).values()))
    doc.p("Every network of the leaderboard, deployed: latency at batch 128 on this machine's CPU (median of "
          f"{any_row['repeats']:g} timed passes after {any_row['warmup']:g} warm-up passes, "
          f"{any_row['threads']:g} CPU thread(s); each network's forms timed in turns with the dense "
          "network, speed-up = dense / this in those same turns), peak forward memory at batch 128 (tensors alive "
          "at once, exact), the size on disk of each stored form, and forward FLOPs per image counting nonzero "
          "weights only (as the leaderboard counts them). Forms: the channel-pruned networks run as the compact "
          "network; a masked network runs as dense with zeros (dense_zeros: what training used) or on "
          "torch.sparse.mm (sparse_mm: CSR weights, convolutions as unfold + CSR × dense), and is stored either "
          "dense or as CSR (sparse_csr). Timings are the noisy column (docs/deploy.md): a speed-up is called "
          f"faster or slower only beyond ±{100 * TIMING_MARGIN:.0f}%.")
    columns = ["method", "sparsity", "test acc (%)", "form", "FLOPs × dense", "ms b1", "ms b128", "speed-up b128",
               "peak MB b128", "disk MB (× dense)"]
    table, faster, smaller, flops_not_time, spread = [], [], [], [], {}
    for e in board.entries:
        forms = cpu.get(e.run_summary, {})
        disks = stored.get(e.run_summary, {})
        # the CSR file's size is also the sparse_mm row's: its own row only when sparse_mm was not timed
        stored_only = [f for f in disks if f not in forms]
        for form in [f for f in RUNNABLE if f in forms] + stored_only:
            r = forms.get(form) or disks[form]
            speed = r.get("speedup_b128")
            flops = _ratio(r.get("flops"), r.get("dense_flops"))
            disk = _ratio(r.get("disk_mb"), dense_disk)
            table.append([e.method, f"{100 * e.sparsity:.1f}%", acc(e.acc), form, _cell(flops),
                          _cell(r.get("latency_ms_b1"), "{:.2f}"), _cell(r.get("latency_ms_b128"), "{:.1f}"),
                          "—" if e.family == "dense" or form not in forms else verdict(speed, r.get("repeats")),
                          _cell(r.get("peak_mem_mb"), "{:.1f}"),
                          f"{_cell(r.get('disk_mb'), '{:.3f}')} ({_cell(disk, '{:.2f}')})"])
            label = f"{e.method} at {100 * e.sparsity:.0f}% ({form})"
            called = speed is not None and (r.get("repeats") or 0) >= MIN_REPEATS
            if e.family != "dense" and called and speed > 1 + TIMING_MARGIN:
                faster.append(f"{label}: {speed:.2f}× the dense network's speed at batch 128")
            if e.family != "dense" and disk is not None and disk < 0.9 and form != "sparse_mm":  # (= its CSR row)
                smaller.append(f"{label}: {disk:.2f}× the dense file ({r['disk_mb']:.3f} MB)")
            if e.family != "dense" and form in forms and speed is not None:
                spread.setdefault(form, []).append((speed, flops))
            if e.family != "dense" and flops is not None and flops < 0.5 and called and speed <= 1 + TIMING_MARGIN:
                flops_not_time.append(f"{label}: {flops:.2f}× the dense FLOPs, speed-up {speed:.2f}×")
    doc.table(Table("deploy", "Deployed on the CPU: latency, peak memory and disk of every network and form",
                    columns, table))
    doc.figure("deploy_accuracy_vs_latency")
    doc.h2("Which methods make the network faster or smaller on this hardware, and by how much?")
    if any_row["repeats"] < MIN_REPEATS:
        doc.p(f"These timings come from {any_row['repeats']:g} timed pass(es) per form (the smoke preset): "
              f"too few to call a speed-up, so none is called below (at least {MIN_REPEATS} are needed; "
              "python deploy.py --force --repeats 20 on a quiet machine). Disk sizes and memory are exact.")
    doc.p("Faster than the dense network at batch 128 (beyond the timing margin): "
          + ("; ".join(faster) if faster else "none") + ".")
    doc.p("Smaller on disk than the dense network (by more than 10%): " + ("; ".join(smaller) if smaller else "none") + ".")
    doc.p("Where FLOPs fall and time does not (FLOPs at most half the dense network's, no speed-up beyond the "
          "margin): " + ("; ".join(flops_not_time) if flops_not_time else "none") + ".")
    doc.p("Measured speed-up at batch 128 per form, over the pruned networks (FLOPs × dense in brackets): " + "; ".join(
        f"{form}: {min(v for v, _ in vals):.2f}–{max(v for v, _ in vals):.2f}× over {len(vals)} networks "
        f"(FLOPs {_cell(min((f for _, f in vals if f is not None), default=None))}–"
        f"{_cell(max((f for _, f in vals if f is not None), default=None))}×)"
        for form, vals in spread.items()) + ". A masked network's FLOPs count its nonzero weights, but the dense "
          "kernels dense_zeros runs on multiply the zeros too; sparse_mm skips them but unfolds every convolution's "
          "input first; only the compact networks, which lost whole channels, run smaller convolutions.")
    unavailable = sorted({f"{r['form']} on {r['device']}: {r['note']}" for r in rows
                          if str(r.get("note") or "").startswith("unavailable")})
    if unavailable:
        doc.p("Forms not available here:")
        doc.bullets(unavailable)
