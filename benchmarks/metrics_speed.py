"""Speed of vclib's metric suite next to cell-eval 0.8.2, and of the discrimination score (PDS) at scale.

Measures, each in a fresh process so the peak memory figures (VmHWM) are not mixed:

1. ``vc.metrics.evaluate`` with every metric on cell-level predictions, the DE of both sides (Wilcoxon) computed
   inside, on 11,000 cells x 8,000 genes x 200 perturbations, one context (simulator: 200 perturbations x 50 cells
   + 1,000 controls; observation seed 0, prediction seed 1), with cell-eval's conventions
   (``vc.metrics.CELL_EVAL``: the prediction's own control, PDS ties by position, each query's own target left out,
   lfc pseudocount 0, overlap/precision 0 without observed DE genes). Warm: numba's kernels compile on first use
   and are cached on disk, so the child first calls evaluate on a tiny input; reading the files is not included;
   timed twice, the faster call reported.
2. The same as a whole process, as a user's scoring script runs: python start, ``import vclib``, reading both
   h5ad files, ``evaluate``, writing the CSV. Each step is timed inside too; the rest is the interpreter's start
   and exit (at exit Python runs its cyclic garbage collector over every object left, several times).
3. ``vc.metrics.discrimination_score`` (L1) for 5,000 perturbations x 8,000 genes on random float32 deltas
   (predictions: the observation plus noise of the same size). Target: <= 10 s. Also timed: a constant predictor,
   for which the L1 kernel's early exit never applies (every distance is summed over all genes).
4. ``cell-eval run --profile full --num-threads 2`` on the same two h5ad files when cell-eval is installed
   (``CELL_EVAL`` or ``cell-eval`` on PATH, else ``/work/celleval-venv/bin/cell-eval``); its wall time includes the
   process start, imports and numba compilation, which cell-eval does not cache. Peak memory via
   ``/usr/bin/time -v`` when available. The script prints the ratios cell-eval / vclib (target 25x, for
   ``evaluate`` and for the whole process) and the parity of every metric both tools report (max |difference|
   over perturbations).

With ``--before DIR`` the vclib measurements (1-3) also run on the checkout in DIR (e.g. ``git worktree add
/tmp/before <commit>``), side by side in the same run. The script prints the load average at the start and, for
each measurement, the CPU seconds other processes used meanwhile (from /proc/stat): on a shared machine they
inflate the wall times; vclib's own CPU time (all threads) is printed too.

Usage: ``python benchmarks/metrics_speed.py [--small] [--keep DIR] [--files DIR] [--before DIR]`` (``--small``: a
reduced design for a quick check; ``--files``: reuse the h5ad files an earlier ``--keep`` wrote).
"""

import argparse
import inspect
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

FULL = {"n_perturbations": 200, "n_genes": 8000, "cells_per_condition": 50, "control_cells": 1000,
        "pds_perturbations": 5000, "pds_genes": 8000}
SMALL = {"n_perturbations": 20, "n_genes": 500, "cells_per_condition": 30, "control_cells": 200,
         "pds_perturbations": 500, "pds_genes": 1000}
TARGET_PDS_S, TARGET_RATIO, CELL_EVAL_REFERENCE_S = 10.0, 25.0, 137.0
REPEATS = 2  # warm evaluate calls; the fastest is reported (the others are printed)
WHOLE_STEPS = ("import anndata", "import vclib", "read", "evaluate", "write")  # timed inside the whole process
PERT_COL, CONTROL = "target_gene", "non-targeting"
# cell-eval's conventions (vc.metrics.CELL_EVAL in vclib versions that have it)
EVALUATE_OPTIONS = dict(perturbation_key=PERT_COL, context_key=None, control=CONTROL, predicted_control="predicted",
                        ties="position", epsilon=0.0, exclude="own")
FALLBACK_CELL_EVAL = "/work/celleval-venv/bin/cell-eval"


def peak_gb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would carry the parent's over through fork)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1e6


def find_cell_eval() -> str | None:
    for candidate in (os.environ.get("CELL_EVAL"), shutil.which("cell-eval")):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return FALLBACK_CELL_EVAL if os.access(FALLBACK_CELL_EVAL, os.X_OK) else None


# ---------------------------------------------------------------------------------------------- data

def write_cell_eval_file(adata, path: Path) -> None:
    """h5ad in cell-eval's layout: obs target_gene with control 'non-targeting', CSR without explicit zeros."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    from scipy import sparse

    X = sparse.csr_matrix(adata.X, dtype=np.float32)
    X.eliminate_zeros()
    X.sort_indices()
    labels = adata.obs["perturbation"].astype(str).replace({"control": CONTROL})
    obs = pd.DataFrame({PERT_COL: pd.Categorical(labels)}, index=adata.obs_names.astype(str))
    ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=adata.var_names.astype(str))).write_h5ad(path)


def build_files(size: dict, tmp: Path) -> tuple[Path, Path, float]:
    import vclib as vc

    design = dict(n_contexts=1, n_perturbations=size["n_perturbations"], n_combinations=0, n_genes=size["n_genes"],
                  cells_per_condition=size["cells_per_condition"], control_cells=size["control_cells"])
    start = time.perf_counter()
    paths = []
    for name, seed in (("real", 0), ("pred", 1)):
        path = tmp / f"{name}.h5ad"
        write_cell_eval_file(vc.loaders.simulate(**design, seed=seed), path)
        paths.append(path)
    return paths[0], paths[1], time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- measuring (children)

def evaluate_options(vc) -> dict:
    """EVALUATE_OPTIONS, with no_de=0 (cell-eval's overlap/precision without observed DE genes) in the vclib
    versions that have the option (older ones always gave 0), so an older checkout can be measured too."""
    return EVALUATE_OPTIONS | ({"no_de": 0.0} if "no_de" in inspect.signature(vc.metrics.evaluate).parameters else {})


def measure_evaluate(real_path: str, pred_path: str, table_path: str) -> dict:
    import anndata as ad
    import numpy as np

    import vclib as vc

    tiny = vc.loaders.simulate(n_contexts=1, n_perturbations=4, n_combinations=0, n_genes=40, cells_per_condition=10,
                               control_cells=20, seed=0)
    vc.metrics.evaluate(tiny, tiny, context_key=None, predicted_control="predicted", ties="position", epsilon=0.0)
    real, pred = ad.read_h5ad(real_path), ad.read_h5ad(pred_path)
    options = evaluate_options(vc)
    times, cpu = [], []
    for _ in range(REPEATS):
        start, start_cpu = time.perf_counter(), time.process_time()
        table = vc.metrics.evaluate(pred, real, **options)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    table.to_csv(table_path, index=False)
    best = int(np.argmin(times))
    return {"seconds": times[best], "cpu_seconds": cpu[best], "all": times, "peak_gb": peak_gb(),
            "metrics": int(table["metric"].nunique())}


def whole_process(real_path: str, pred_path: str, table_path: str) -> dict:
    """What a user's scoring script does, timed by the parent from process start: import, read, evaluate, write.
    Each step is timed here too; the rest of the parent's figure is the interpreter's start and exit."""
    marks = [time.perf_counter()]
    import anndata as ad

    marks.append(time.perf_counter())
    import vclib as vc

    vc.metrics  # noqa: B018 (vclib loads its modules on first use)
    marks.append(time.perf_counter())
    pred, real = ad.read_h5ad(pred_path), ad.read_h5ad(real_path)
    marks.append(time.perf_counter())
    table = vc.metrics.evaluate(pred, real, **evaluate_options(vc))
    marks.append(time.perf_counter())
    table.to_csv(table_path, index=False)
    marks.append(time.perf_counter())
    steps = dict(zip(WHOLE_STEPS, (b - a for a, b in pairwise(marks)), strict=True))
    return {"vclib": vc.__file__, "steps": steps}


def measure_pds(n_perts: int, n_genes: int) -> dict:
    import numpy as np

    import vclib as vc

    rng = np.random.default_rng(0)
    vc.metrics.discrimination_score(rng.standard_normal((8, 16)), rng.standard_normal((8, 16)))
    observed = rng.standard_normal((n_perts, n_genes), dtype=np.float32)
    predicted = observed + rng.standard_normal((n_perts, n_genes), dtype=np.float32)
    start, start_cpu = time.perf_counter(), time.process_time()
    vc.metrics.discrimination_score(predicted, observed, distance="l1")
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    # the worst case for the early exit of vclib's L1 kernel: a constant predictor, every distance computed whole
    constant = np.repeat(predicted[:1], n_perts, axis=0)
    start = time.perf_counter()
    vc.metrics.discrimination_score(constant, observed, distance="l1")
    return {"seconds": elapsed, "cpu_seconds": cpu, "constant_seconds": time.perf_counter() - start,
            "peak_gb": peak_gb()}


def busy_cpu_seconds() -> float:
    """CPU seconds spent by the whole machine so far (all states but idle and iowait), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured(cmd: list[str], env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``cmd``; also return the CPU seconds other processes used meanwhile (they inflate the timings)."""
    machine, own = busy_cpu_seconds(), children_cpu_seconds()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    others = (busy_cpu_seconds() - machine) - (children_cpu_seconds() - own)
    return proc, max(others, 0.0)


def in_child(*args: str, vclib: Path | None = None) -> dict:
    """Run this script with ``args`` in a fresh interpreter (importing vclib from the checkout ``vclib`` when
    given) and return the JSON it prints last, with the child's wall time from start to exit."""
    env = os.environ | ({"PYTHONPATH": str(vclib)} if vclib else {})
    start = time.perf_counter()
    proc, others = measured([sys.executable, __file__, *args], env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"others_cpu_s": others, "process_s": wall}


def contention(result: dict) -> str:
    """How much CPU other processes took during a measurement."""
    others = result["others_cpu_s"]
    return f"other processes used {others:.0f} CPU-s meanwhile" + (" (timing inflated)" if others > 5 else "")


# ---------------------------------------------------------------------------------------------- cell-eval

def run_cell_eval(exe: str, real: Path, pred: Path, outdir: Path) -> dict:
    cmd = [exe, "run", "-ap", str(pred), "-ar", str(real), "--pert-col", PERT_COL, "--control-pert", CONTROL,
           "--profile", "full", "--num-threads", "2", "-o", str(outdir)]
    timer = ["/usr/bin/time", "-v"] if os.access("/usr/bin/time", os.X_OK) else []
    start = time.perf_counter()
    proc, others = measured(timer + cmd)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"cell-eval failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return {"seconds": elapsed, "peak_gb": int(match.group(1)) / 1e6 if match else None, "others_cpu_s": others}


def parity_summary(outdir: Path, table_path: Path) -> str:
    """Worst |cell-eval - vclib| over the metrics both tools report (NaN vs NaN equal)."""
    import numpy as np
    import pandas as pd

    ce = pd.read_csv(outdir / "results.csv").set_index("perturbation")
    table = pd.read_csv(table_path)
    vcl = table[table["perturbation"] != "*"].pivot(index="perturbation", columns="metric", values="value")
    shared = sorted(set(ce.columns) & set(vcl.columns))
    worst, differing = {}, {}
    for m in shared:
        a, b = ce[m].to_numpy(float), vcl.loc[ce.index.astype(str), m].to_numpy(float)
        with np.errstate(invalid="ignore"):
            d = np.nan_to_num(np.where(np.isnan(a) & np.isnan(b), 0.0, np.abs(a - b)), nan=np.inf)
        worst[m] = float(d.max())
        differing[m] = ce.index.astype(str)[d > 1e-6].tolist()
    ok = [m for m, d in worst.items() if d <= 1e-6]
    bad = ", ".join(f"{m} {d:.2g}" for m, d in worst.items() if d > 1e-6) or "none"
    top = max(worst, key=worst.get)
    ties = tied_cuts(outdir, {m: perts for m, perts in differing.items() if perts})
    return (f"{len(ok)}/{len(shared)} shared metrics within 1e-6 of cell-eval (largest: {top} {worst[top]:.2g}); "
            f"beyond 1e-6: {bad}{ties}")


def tied_cuts(outdir: Path, differing: dict[str, list[str]]) -> str:
    """For overlap/precision differences (``differing``: metric -> perturbations beyond 1e-6): does the top-k cut
    fall inside a block of exactly tied float32 |lfc| in cell-eval's own DE tables? cell-eval orders tied genes by
    polars' rank("ordinal") over an unstable sort, so there its choice is arbitrary; vclib keeps the genes' order.
    Other differences are reported as such."""
    import numpy as np
    import pandas as pd

    lists = {}
    for side in ("real", "pred"):
        de = pd.read_csv(outdir / f"{side}_de.csv")
        de = de[de["fdr"].astype(np.float32) < np.float32(0.05)]
        de = de.assign(abs32=de["log2_fold_change"].abs().astype(np.float32))
        lists[side] = {t: np.sort(g["abs32"].to_numpy())[::-1] for t, g in de.groupby("target")}
    in_tie = other = 0
    for m, perts in differing.items():
        kind, _, k = m.partition("_at_")
        if kind not in ("overlap", "precision"):
            continue
        for pert in perts:
            real, pred = (lists[s].get(pert, np.array([])) for s in ("real", "pred"))
            size = real.size if kind == "overlap" else pred.size
            k_eff = size if k == "N" else min(int(k), size)
            cut = [v for v in (real, pred) if v.size > k_eff > 0 and v[k_eff - 1] == v[k_eff]]
            in_tie, other = in_tie + bool(cut), other + (not cut)
    if not in_tie + other:
        return ""
    return (f"; of the overlap/precision values that differ, {in_tie} have their top-k cut inside exactly tied "
            f"|lfc| (e.g. several -inf with pseudocount 0), which cell-eval orders arbitrarily, {other} do not")


# ---------------------------------------------------------------------------------------------- main

def measure_checkout(real: Path, pred: Path, tmp: Path, size: dict, label: str, vclib: Path | None) -> dict:
    """evaluate (warm, in-process), the whole scoring process, and PDS, for one vclib checkout."""
    ev = in_child("--measure-evaluate", str(real), str(pred), str(tmp / f"vclib-{label}.csv"), vclib=vclib)
    print(f"[{label}] vclib evaluate, all {ev['metrics']} metrics + DE of both sides: {ev['seconds']:.2f} s "
          f"(fastest of {', '.join(f'{t:.2f}' for t in ev['all'])}; CPU {ev['cpu_seconds']:.1f} s); peak RSS "
          f"{ev['peak_gb']:.2f} GB; {contention(ev)}")
    whole = in_child("--whole-process", str(real), str(pred), str(tmp / f"vclib-{label}-process.csv"), vclib=vclib)
    steps = whole["steps"] | {"start and exit": whole["process_s"] - sum(whole["steps"].values())}
    print(f"[{label}] vclib as a whole process (python start, import vclib, read both h5ad, evaluate, write the "
          f"CSV): {whole['process_s']:.2f} s = {' + '.join(f'{k} {v:.2f}' for k, v in steps.items())}; "
          f"{contention(whole)}; vclib from {Path(whole['vclib']).parent}")
    pds = in_child("--measure-pds", str(size["pds_perturbations"]), str(size["pds_genes"]), vclib=vclib)
    print(f"[{label}] vclib discrimination_score L1, {size['pds_perturbations']:,} x {size['pds_genes']:,} random "
          f"float32 deltas: {pds['seconds']:.2f} s (CPU {pds['cpu_seconds']:.1f} s) (target <= {TARGET_PDS_S:.0f} s: "
          f"{'met' if pds['seconds'] <= TARGET_PDS_S else 'MISSED'}); a constant predictor (no pair can stop "
          f"early): {pds['constant_seconds']:.2f} s; peak RSS {pds['peak_gb']:.2f} GB; {contention(pds)}")
    return {"evaluate": ev["seconds"], "process": whole["process_s"], "pds": pds["seconds"], "steps": steps}


def main(small: bool, keep: Path | None, files: Path | None, before: Path | None) -> None:
    size = SMALL if small else FULL
    n_cells = size["n_perturbations"] * size["cells_per_condition"] + size["control_cells"]
    print(f"{'SMALL check' if small else 'Full size'}: {n_cells:,} cells x {size['n_genes']:,} genes x "
          f"{size['n_perturbations']} perturbations (one context); PDS {size['pds_perturbations']:,} x "
          f"{size['pds_genes']:,}. {os.cpu_count()} CPUs; load average before starting: "
          f"{Path('/proc/loadavg').read_text().split()[:3]}. vclib's evaluate times are warm (numba compiled/cached "
          "by a first call on a tiny input; file reading excluded); the whole-process times include everything.")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        if files is not None:
            real, pred = files / "real.h5ad", files / "pred.h5ad"
            print(f"  observation and prediction read from {files} (written by an earlier --keep run)")
        else:
            real, pred, t_build = build_files(size, tmp)
            print(f"  built observation (seed 0) and prediction (seed 1) with the simulator: {t_build:.1f} s "
                  "(not timed)")
        runs = {}
        if before is not None:
            runs["before"] = measure_checkout(real, pred, tmp, size, "before", before)
        runs["this"] = measure_checkout(real, pred, tmp, size, "this", None)
        exe = find_cell_eval()
        if exe is None:
            print("cell-eval: not installed (set CELL_EVAL or put cell-eval on PATH); skipped.")
            return
        ce = run_cell_eval(exe, real, pred, tmp / "cell-eval")
        peak = f"peak RSS {ce['peak_gb']:.2f} GB" if ce["peak_gb"] is not None else "peak RSS not measured"
        print(f"cell-eval run --profile full --num-threads 2 (whole CLI process): {ce['seconds']:.1f} s; {peak}; "
              f"{contention(ce)} (reference: {CELL_EVAL_REFERENCE_S:.0f} s at full size on the dev machine)")
        print(f"\n{'':8} {'evaluate s':>11} {'whole s':>8} {'PDS s':>6}   cell-eval/evaluate  cell-eval/whole "
              f"(target {TARGET_RATIO:.0f}x)   whole process: " + ", ".join(runs["this"]["steps"]) + " s")
        for label, r in runs.items():
            print(f"{label:8} {r['evaluate']:11.2f} {r['process']:8.2f} {r['pds']:6.2f}   "
                  f"{ce['seconds'] / r['evaluate']:17.1f}x {ce['seconds'] / r['process']:15.1f}x   "
                  + " ".join(f"{v:.2f}" for v in r["steps"].values()))
        for label in runs:
            print(f"parity [{label}]: {parity_summary(tmp / 'cell-eval', tmp / f'vclib-{label}.csv')}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure-evaluate"]:
        print(json.dumps(measure_evaluate(*sys.argv[2:5])))
    elif sys.argv[1:2] == ["--whole-process"]:
        print(json.dumps(whole_process(*sys.argv[2:5])))
    elif sys.argv[1:2] == ["--measure-pds"]:
        print(json.dumps(measure_pds(int(sys.argv[2]), int(sys.argv[3]))))
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--small", action="store_true", help="reduced sizes for a quick check")
        parser.add_argument("--keep", type=Path, default=None, help="keep the h5ad files and outputs in this folder")
        parser.add_argument("--files", type=Path, default=None,
                            help="use real.h5ad and pred.h5ad from this folder (an earlier --keep) instead of building")
        parser.add_argument("--before", type=Path, default=None,
                            help="also measure the vclib of this checkout (e.g. a git worktree of an older commit)")
        args = parser.parse_args()
        main(args.small, args.keep, args.files, args.before)
