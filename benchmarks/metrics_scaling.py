"""How scoring time grows with perturbations and genes: vclib's ``evaluate`` and cell-eval 0.8.2, log-log slopes.

Sizes: 50 / 200 / 800 perturbations at 8,000 genes, and 2,000 / 8,000 / 20,000 genes at 200 perturbations; 50 cells
per perturbation and 1,000 control cells, one context (the 200 x 8,000 design is the one of
``benchmarks/metrics_speed.py``, shared by both series). The files are drawn directly (Poisson counts around
gamma-distributed gene means, a few responding genes per perturbation, library-size normalised to 1e4 and log1p,
CSR float32 in cell-eval's layout), which takes seconds where the simulator takes minutes at these sizes; the
prediction is a second draw with another seed.

For each size the script measures, each in a fresh process (``metrics_speed.py``'s children): vclib's
``evaluate`` warm with cell-eval's conventions (``vc.metrics.CELL_EVAL``), vclib as a whole process (python start,
import, reading, evaluate, writing), and ``cell-eval run --profile full --num-threads 2`` as a whole CLI process.
It prints a table and, per series, the slope of log(time) against log(size) fitted by least squares (1 = linear).

Usage: ``python benchmarks/metrics_scaling.py [--no-cell-eval] [--small]`` (``--small``: sizes divided by ten for
a quick check). cell-eval is found as in ``metrics_speed.py``. At full size cell-eval takes about 25 minutes in all.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from metrics_speed import (  # noqa: E402  (the harness of the sibling script: children, cell-eval runner)
    CONTROL,
    PERT_COL,
    find_cell_eval,
    in_child,
    run_cell_eval,
)

CELLS_PER_PERTURBATION, CONTROL_CELLS = 50, 1000
PERTURBATIONS, GENES = (50, 200, 800), (2000, 8000, 20000)
BASE_PERTURBATIONS, BASE_GENES = 200, 8000


def write_screen(path: Path, n_perturbations: int, n_genes: int, *, cells: int, controls: int, seed: int) -> None:
    """A random screen in cell-eval's layout: log1p of library-size-normalised Poisson counts, CSR float32."""
    import anndata as ad
    import pandas as pd
    from scipy import sparse

    rng = np.random.default_rng(seed)
    gene_mean = rng.gamma(0.3, 1.0, n_genes)  # many lowly expressed genes, as in droplet data: sparse
    labels = np.r_[np.repeat(CONTROL, controls), np.repeat([f"P{i}" for i in range(n_perturbations)], cells)]
    effects = np.ones((n_perturbations + 1, n_genes))
    for p in range(1, n_perturbations + 1):  # row 0: control
        genes = rng.choice(n_genes, 20, replace=False)
        effects[p, genes] = rng.choice([0.3, 3.0], 20)
    group = np.r_[np.zeros(controls, int), np.repeat(np.arange(1, n_perturbations + 1), cells)]
    blocks = []
    for start in range(0, labels.size, 4096):  # row blocks keep the dense draw small
        rows = slice(start, min(start + 4096, labels.size))
        counts = rng.poisson(gene_mean * effects[group[rows]] * rng.gamma(5.0, 0.2, (group[rows].size, 1)))
        normalised = counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4
        blocks.append(sparse.csr_matrix(np.log1p(normalised).astype(np.float32)))
    X = sparse.vstack(blocks, format="csr")
    X.eliminate_zeros()
    obs = pd.DataFrame({PERT_COL: pd.Categorical(labels)}, index=[f"c{i}" for i in range(labels.size)])
    ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)])).write_h5ad(path)


def slope(sizes, seconds) -> float:
    """Least-squares slope of log(seconds) against log(size)."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def main(small: bool, with_cell_eval: bool) -> None:
    scale = 10 if small else 1
    cells, controls = CELLS_PER_PERTURBATION, CONTROL_CELLS // scale
    designs = sorted({(p // scale, BASE_GENES // scale) for p in PERTURBATIONS}
                     | {(BASE_PERTURBATIONS // scale, g // scale) for g in GENES})
    exe = find_cell_eval() if with_cell_eval else None
    print(f"Load average at the start: {Path('/proc/loadavg').read_text().split()[:3]}; "
          f"{cells} cells per perturbation + {controls} controls; cell-eval: {exe or 'not run'}")
    times = {}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        for n_pert, n_genes in designs:
            real, pred = tmp / "real.h5ad", tmp / "pred.h5ad"
            for path, seed in ((real, 0), (pred, 1)):
                write_screen(path, n_pert, n_genes, cells=cells, controls=controls, seed=seed)
            ev = in_child("--measure-evaluate", str(real), str(pred), str(tmp / "vclib.csv"))
            whole = in_child("--whole-process", str(real), str(pred), str(tmp / "vclib-process.csv"))
            ce = run_cell_eval(exe, real, pred, tmp / "cell-eval")["seconds"] if exe else np.nan
            times[n_pert, n_genes] = (ev["seconds"], whole["process_s"], ce)
            print(f"  {n_pert:5d} perturbations x {n_genes:6,d} genes ({n_pert * cells + controls:,} cells): vclib "
                  f"evaluate {ev['seconds']:6.2f} s, whole process {whole['process_s']:6.2f} s, cell-eval {ce:7.1f} s"
                  f"  (other processes: {ev['others_cpu_s'] + whole['others_cpu_s']:.0f} CPU-s)", flush=True)
    series = {"perturbations": [(p // scale, BASE_GENES // scale) for p in PERTURBATIONS],
              "genes": [(BASE_PERTURBATIONS // scale, g // scale) for g in GENES]}
    print("\nlog-log slopes (time ~ size^slope; 1 = linear):")
    for name, keys in series.items():
        sizes = [k[0] if name == "perturbations" else k[1] for k in keys]
        parts = [f"{tool} {slope(sizes, [times[k][i] for k in keys]):.2f}"
                 for i, tool in enumerate(("vclib evaluate", "vclib whole process", "cell-eval"))
                 if np.isfinite([times[k][i] for k in keys]).all()]
        print(f"  in {name} ({', '.join(map(str, sizes))}): {'; '.join(parts)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="sizes divided by ten, for a quick check")
    parser.add_argument("--no-cell-eval", action="store_true", help="measure vclib only")
    args = parser.parse_args()
    main(args.small, not args.no_cell_eval)
