"""`vclib run` end to end on every real dataset in ../shared/real-data and on the shapes cut from them.

Each shape is a real screen as a user would bring it (their own keys, their own values); the script runs the
README's command on it and prints, per shape: the exit code, the wall time, whether ``index.html`` was written,
how many analyses were skipped or adjusted (with the first reason), and the key-figure rows. Shapes the files do
not have as they are (Norman K562 alone, the McFaline lines alone, two contexts, three cells per condition) are
cut from them into a temporary folder; nothing is written next to the data.

Run: ``.venv/bin/python benchmarks/real_data_runs.py [--only NAME ...] [--results DIR]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real-data"
DEVEL = REAL / "perturbench_devel_norman19_mcfaline23" / "devel.h5ad"
DEVEL_KEYS = ["--perturbation-key", "condition", "--context-key", "cell_type", "--control", "control"]


def _subset(path: Path, out: Path, keep) -> Path:
    adata = ad.read_h5ad(path)
    adata[keep(adata)].copy().write_h5ad(out)
    return out


def _few_cells(adata: ad.AnnData, n: int = 3, seed: int = 0) -> np.ndarray:
    """Every perturbed condition cut to ``n`` cells (controls kept): the "three cells in a condition" shape."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(adata.n_obs, dtype=bool)
    groups = adata.obs.groupby(["cell_type", "condition"], observed=True).indices
    for (_, condition), rows in groups.items():
        keep[rows if condition == "control" else rng.choice(rows, min(n, len(rows)), replace=False)] = True
    return keep


def shapes(tmp: Path) -> dict[str, tuple[Path, list[str]]]:
    """Name: (h5ad file, `vclib run` arguments besides the file)."""
    kang = REAL / "kang2018_ifnb_pbmc_muscat_subset" / "kang2018_muscat_example_sce.h5ad"
    distinct = REAL / "kang2018_ifnb_pbmc_distinct_subset" / "kang2018_distinct_Kang_subset.h5ad"
    gbm = REAL / "zhao2021_glioblastoma_panobinostat_lemur_subset" / "zhao2021_glioblastoma_panobinostat.h5ad"
    signatures = REAL / "sigrecon_context_signatures" / "neurips2023_pbmc_drugs_rank_signatures.h5ad"
    mcfaline = ["A172", "T98G", "U87MG"]
    return {
        "kang_muscat (1 perturbation x 5 cell types, counts)": (
            kang, ["--perturbation-key", "group_id", "--context-key", "cluster_id", "--control", "ctrl"]),
        "kang_distinct (1 x 8 cell types, log2 values)": (
            distinct, ["--perturbation-key", "stim", "--context-key", "cell", "--control", "ctrl",
                       "-p", "VALUES", "log2p"]),
        "glioblastoma (a drug x 5 patients)": (
            gbm, ["--perturbation-key", "condition", "--context-key", "patient_id", "--control", "ctrl"]),
        "norman+mcfaline (4 lines, K562-only perturbations, doubles)": (DEVEL, DEVEL_KEYS),
        "norman_k562 (many perturbations x 1 line, doubles)": (
            _subset(DEVEL, tmp / "norman_k562.h5ad", lambda a: (a.obs["cell_type"] == "k562").to_numpy()),
            DEVEL_KEYS),
        "mcfaline (9 knockdowns x 3 lines)": (
            _subset(DEVEL, tmp / "mcfaline.h5ad", lambda a: a.obs["cell_type"].isin(mcfaline).to_numpy()),
            DEVEL_KEYS),
        "two_lines (A172 and T98G)": (
            _subset(DEVEL, tmp / "two_lines.h5ad", lambda a: a.obs["cell_type"].isin(mcfaline[:2]).to_numpy()),
            DEVEL_KEYS),
        "three_cells (devel, 3 cells per perturbed condition)": (
            _subset(DEVEL, tmp / "three_cells.h5ad", _few_cells), DEVEL_KEYS),
        "signatures (NeurIPS-2023 PBMC drugs, ranks, no cells)": (
            signatures, ["-p", "VALUES", "signature"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only shapes whose name starts with one of these")
    parser.add_argument("--results", default=None, help="parent folder of the runs (default: a temporary one)")
    args = parser.parse_args()
    if not REAL.exists():
        print(f"{REAL} not found: nothing to run.")
        return 0
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(args.results or Path(tmp) / "runs")
        for name, (path, extra) in shapes(Path(tmp)).items():
            if args.only and not any(name.startswith(o) for o in args.only):
                continue
            run_name = name.split(" ")[0]
            command = [str(ROOT / ".venv" / "bin" / "vclib"), "run", str(path), *extra, "--results", str(results),
                       "--name", run_name]
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            run_dir = results / run_name
            failed += done.returncode != 0
            print(f"\n=== {name}\nexit {done.returncode} in {seconds:.0f} s; index.html "
                  f"{'written' if (run_dir / 'index.html').exists() else 'MISSING'}")
            if done.returncode:
                print(done.stderr[-2000:])
            entries = run_dir / "skipped.csv"
            if entries.exists():
                table = pd.read_csv(entries, dtype=str, keep_default_na=False)
                for row in table.itertuples(index=False):
                    print(f"  [{row.notebook} {getattr(row, 'kind', 'skipped')}] {row.analysis}: {row.reason}")
            best = run_dir / "benchmark_best.csv"
            if best.exists():
                print(pd.read_csv(best).to_string(index=False, max_colwidth=40))
    print(f"\n{failed} shape(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
