"""Pseudobulk of a large h5ad opened in backed mode: wall time and peak memory against the matrix size.

Writes a file of N cells (default 1,000,000; pass another number as the first argument) by repeating the
simulator's counts, then computes the pseudobulk in a fresh process, reading the matrix in chunks. That
process's peak resident memory stays far below the size of the matrix.
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(path: str) -> None:
    import vclib as vc

    start = time.perf_counter()
    adata = vc.loaders.read(path, backed=True)
    pb = vc.pseudobulk.pseudobulk(adata, chunk_size=20_000)
    elapsed = time.perf_counter() - start
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec.
    status = Path("/proc/self/status").read_text()
    peak = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1e6
    print(f"  -> {pb.n_obs} conditions in {elapsed:.1f} s; peak RSS of the reading process {peak:.2f} GB")


def main(n_cells: int) -> None:
    import anndata as ad
    import numpy as np
    from scipy import sparse

    import vclib as vc

    base = vc.loaders.simulate()
    reps = -(-n_cells // base.n_obs)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "large.h5ad"
        counts = sparse.vstack([base.layers["counts"]] * reps).tocsr()[:n_cells]
        obs = base.obs[["perturbation", "context"]].iloc[np.arange(n_cells) % base.n_obs].reset_index(drop=True)
        obs.index = obs.index.astype(str)
        ad.AnnData(X=counts, obs=obs, var=base.var).write_h5ad(path)
        print(f"{n_cells:,} cells x {base.n_vars} genes, raw counts: file {path.stat().st_size / 1e9:.2f} GB, "
              f"in-memory CSR {(counts.data.nbytes + counts.indices.nbytes) / 1e9:.2f} GB, "
              f"dense float64 {n_cells * base.n_vars * 8 / 1e9:.1f} GB")
        del counts, obs
        subprocess.run([sys.executable, __file__, "--measure", str(path)], check=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        measure(sys.argv[2])
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
