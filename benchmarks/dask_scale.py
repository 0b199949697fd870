"""Pseudobulk and DE past one machine: a synthetic counts store on a 2-worker dask LocalCluster, 3 GB per worker.

Writes N cells (default 1,000,000; ``--cells 10000000`` for 10 M) × 2,000 genes of raw counts to an h5ad file chunk
by chunk (``anndata.io.sparse_dataset(...).append``; the matrix is never whole in memory), in ~1,000 conditions
(4 contexts × 250 perturbations, control included), cells in random order, so every chunk holds nearly every
condition. Then, on a ``distributed.LocalCluster`` of 2 worker processes (1 thread each, ``memory_limit`` 3 GB, spilling
to the temp folder), it times ``vc.loaders.read(path, chunks=...)``, ``vc.pseudobulk.pseudobulk``,
``vc.pseudobulk.split_halves``, ``vc.metrics.rank_genes`` and ``vc.coverage.control_distances`` (PCA of the control
cells from chunked moments and Gram matrix, E-distance, correlation distance), and prints each worker's peak resident
memory (VmHWM). ``--compare`` also runs the in-memory path on the same file and prints the largest differences. The temp
folder is deleted at the end.

    python benchmarks/dask_scale.py                      # 1 M cells
    python benchmarks/dask_scale.py --cells 10000000 --no-distances   # 10 M cells: a 27 GB file, ~20 min
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from scipy import sparse

N_GENES = 2_000
N_CONTEXTS = 4
N_PERTURBATIONS = 250  # per context, control included: 1,000 conditions
WRITE_ROWS = 50_000
POOL = 200  # generated cells per condition


def _design(n_cells: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """obs (random order; 5% control cells per context) and each cell's condition code."""
    rng = np.random.default_rng(seed)
    context = rng.integers(N_CONTEXTS, size=n_cells)
    perturbation = np.where(rng.random(n_cells) < 0.05, 0, rng.integers(1, N_PERTURBATIONS, size=n_cells))
    names = np.array(["control"] + [f"P{i:03d}" for i in range(1, N_PERTURBATIONS)])
    obs = pd.DataFrame({"perturbation": pd.Categorical.from_codes(perturbation, names),
                        "context": pd.Categorical.from_codes(context, [f"C{i}" for i in range(N_CONTEXTS)])},
                       index=pd.RangeIndex(n_cells).astype(str))
    return obs, context * N_PERTURBATIONS + perturbation


def _pool(seed: int = 1) -> sparse.csr_matrix:
    """POOL cells per condition (condition k in rows k * POOL ...): Poisson counts of gene base rates (~10% of the
    matrix non-zero), 20 responding genes per perturbed condition, lognormal library sizes. Written cells are
    drawn from their condition's pool: drawing N cells' counts afresh took ~80 s per million."""
    rng = np.random.default_rng(seed)
    base = rng.lognormal(-3.0, 1.5, N_GENES).astype(np.float32)
    parts = []
    for k in range(N_CONTEXTS * N_PERTURBATIONS):
        rate = np.tile(base, (POOL, 1)) * rng.lognormal(0, 0.3, (POOL, 1)).astype(np.float32)
        if k % N_PERTURBATIONS:
            rate[:, rng.choice(N_GENES, 20, replace=False)] *= rng.lognormal(0, 1, 20).astype(np.float32)
        parts.append(sparse.csr_matrix(rng.poisson(rate).astype(np.float32)))
    return sparse.vstack(parts, format="csr")


def write_store(path: Path, n_cells: int) -> int:
    """The h5ad file, X appended WRITE_ROWS cells at a time; returns the number of stored values."""
    obs, condition = _design(n_cells)
    pool = _pool()
    pick = condition * POOL + np.random.default_rng(2).integers(POOL, size=n_cells)
    with h5py.File(path, "w") as f:
        for start in range(0, n_cells, WRITE_ROWS):
            chunk = pool[pick[start : start + WRITE_ROWS]]
            if start == 0:  # 64-bit indices: past 2**31 stored values (~10 M cells) 32-bit ones overflow
                chunk.indptr, chunk.indices = chunk.indptr.astype(np.int64), chunk.indices.astype(np.int64)
                ad.io.write_elem(f, "X", chunk)
            else:
                ad.io.sparse_dataset(f["X"]).append(chunk)
        ad.io.write_elem(f, "obs", obs)
        ad.io.write_elem(f, "var", pd.DataFrame(index=[f"G{i:04d}" for i in range(N_GENES)]))
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})  # what read_h5ad expects
        return f["X"]["data"].shape[0]


def _peak_gb() -> float:
    """This process's peak resident memory (VmHWM, not ru_maxrss, which carries over through fork)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1e6


def numba_threads() -> int:
    import numba

    return numba.get_num_threads()


def main(n_cells: int, chunks: int, memory_limit: str, *, compare: bool = False, distances: bool = True) -> None:
    import distributed

    import vclib as vc

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "counts.h5ad"
        start = time.perf_counter()
        nnz = write_store(path, n_cells)
        print(f"{n_cells:,} cells x {N_GENES:,} genes, {N_CONTEXTS * N_PERTURBATIONS:,} conditions: "
              f"{nnz / n_cells / N_GENES:.1%} non-zero, file {path.stat().st_size / 1e9:.2f} GB, "
              f"written chunk by chunk in {time.perf_counter() - start:.0f} s")
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=memory_limit,
                                           local_directory=tmp, dashboard_address=None,
                                           env={"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
        with cluster, distributed.Client(cluster) as client:
            start = time.perf_counter()
            client.run(lambda: __import__("vclib.metrics") and None)  # workers import vclib, scanpy and numba once
            print(f"  workers started and imported vclib in {time.perf_counter() - start:.0f} s")
            times = {}
            start = time.perf_counter()
            adata = vc.loaders.read(path, chunks=chunks)
            times["read (lazy) + checks"] = time.perf_counter() - start
            start = time.perf_counter()
            pb = vc.pseudobulk.pseudobulk(adata)
            times["pseudobulk"] = time.perf_counter() - start
            start = time.perf_counter()
            vc.pseudobulk.split_halves(adata, seed=0)
            times["split_halves"] = time.perf_counter() - start
            start = time.perf_counter()
            de = vc.metrics.rank_genes(adata)
            times["rank_genes (Wilcoxon)"] = time.perf_counter() - start
            table = None
            if distances:
                start = time.perf_counter()
                table = vc.coverage.control_distances(adata)
                times["control_distances"] = time.perf_counter() - start
            peaks = client.run(_peak_gb)
        if compare:  # the in-memory path on the same file, in this process
            start = time.perf_counter()
            memory = vc.loaders.read(path)
            pb_memory, de_memory = vc.pseudobulk.pseudobulk(memory), vc.metrics.rank_genes(memory)
            elapsed = time.perf_counter() - start
            differences = [f"pseudobulk {np.abs(pb_memory.X - pb.X).max():.1e}"] + [
                f"{k} {np.nanmax(np.abs(getattr(de_memory, k) - getattr(de, k))):.1e}"
                for k in ("lfc", "pvalue", "fdr")]
            elapsed_distances = 0.0
            if table is not None:
                start = time.perf_counter()
                table_memory = vc.coverage.control_distances(memory)
                elapsed_distances = time.perf_counter() - start
                differences += [f"{k} {np.abs(table_memory[k] - table[k]).max():.1e}"
                                for k in ("edistance", "correlation_distance")]
            print(f"  in memory (one process, {numba_threads()} numba threads): {elapsed + elapsed_distances:.1f} s "
                  f"(control_distances {elapsed_distances:.1f} s); max |in memory - dask|: " + ", ".join(differences))
            del memory
        for step, seconds in times.items():
            print(f"  {step:<24} {seconds:7.1f} s")
        print(f"  {'total':<24} {sum(times.values()):7.1f} s  ({n_cells / sum(times.values()):,.0f} cells/s; "
              f"{pb.n_obs:,} conditions, DE {de.pvalue.shape[0]:,} x {de.pvalue.shape[1]:,}"
              + (f", PCA of {(adata.obs['perturbation'] == 'control').sum():,} control cells for {len(table)} context "
                 "pairs)" if table is not None else ")"))
        print(f"  peak resident memory per worker (limit {memory_limit}): "
              + ", ".join(f"{gb:.2f} GB" for gb in peaks.values()) + f"; client {_peak_gb():.2f} GB")
        print(f"  machine load average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--chunks", type=int, default=20_000, help="cells per dask chunk")
    parser.add_argument("--memory-limit", default="3GB", help="per worker")
    parser.add_argument("--compare", action="store_true", help="also run the in-memory path and print the differences")
    parser.add_argument("--no-distances", action="store_true", help="skip control_distances (pseudobulk and DE only)")
    args = parser.parse_args()
    main(args.cells, args.chunks, args.memory_limit, compare=args.compare, distances=not args.no_distances)
