"""Pseudobulk is exact (against a naive loop), sparse-safe, works backed in chunks; split halves are disjoint."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import vclib as vc


def _naive(adata) -> pd.DataFrame:
    """Loop over conditions and average their cells' rows: the definition, written the slow way."""
    X = (adata.X.toarray() if sparse.issparse(adata.X) else np.asarray(adata.X)).astype(np.float64)
    rows = {}
    for (c, p), cells in adata.obs.groupby(["context", "perturbation"], observed=True).groups.items():
        idx = adata.obs_names.get_indexer(cells)
        rows[f"{c}|{p}"] = X[idx].mean(axis=0)
    return pd.DataFrame(rows).T


def test_exact_against_naive_loop(sim):
    pb = vc.pseudobulk.pseudobulk(sim)
    naive = _naive(sim)
    assert set(pb.obs_names) == set(naive.index)
    np.testing.assert_allclose(pb.X, naive.loc[pb.obs_names].to_numpy(), rtol=1e-12, atol=1e-12)
    sizes = sim.obs.groupby(["context", "perturbation"], observed=True).size()
    assert all(pb.obs.loc[f"{c}|{p}", "n_cells"] == n for (c, p), n in sizes.items())
    assert pb.obs["is_control"].sum() == sim.obs["context"].nunique()


def test_dense_and_sparse_agree(sim):
    dense = sim.copy()
    dense.X = sim.X.toarray()
    np.testing.assert_allclose(vc.pseudobulk.pseudobulk(dense).X, vc.pseudobulk.pseudobulk(sim).X, atol=1e-12)


class _NoDensify(sparse.csr_matrix):
    """A CSR matrix that refuses to be densified whole (its row slices may be)."""

    def toarray(self, *args, **kwargs):
        if self.shape[0] > 500:
            raise AssertionError("the cell matrix was densified")
        return super().toarray(*args, **kwargs)

    todense = toarray


def test_sparse_input_is_not_densified(sim):
    sim.X = _NoDensify(sim.X)
    assert sim.X.shape[0] > 500
    pb = vc.pseudobulk.pseudobulk(sim, chunk_size=100_000)
    assert np.isfinite(pb.X).all()


def test_backed_file_in_chunks_matches_memory(sim, tmp_path):
    path = tmp_path / "sim.h5ad"
    sim.write_h5ad(path)
    backed = vc.loaders.read(path, backed=True)
    in_memory = vc.pseudobulk.pseudobulk(sim)
    chunked = vc.pseudobulk.pseudobulk(backed, chunk_size=97)  # chunks that cut conditions apart
    np.testing.assert_allclose(chunked.X, in_memory.X, atol=1e-10)


def test_backed_counts_are_normalised_chunk_by_chunk(sim, tmp_path):
    counts = ad.AnnData(X=sim.layers["counts"], obs=sim.obs[["perturbation", "context"]].copy(), var=sim.var)
    path = tmp_path / "counts.h5ad"
    counts.write_h5ad(path)
    backed = vc.loaders.read(path, backed=True)
    assert backed.uns["vclib"]["values"] == "counts"
    chunked = vc.pseudobulk.pseudobulk(backed, chunk_size=50)
    np.testing.assert_allclose(chunked.X, vc.pseudobulk.pseudobulk(sim).X, atol=1e-5)


def test_split_halves_are_disjoint_and_average_to_the_whole(sim):
    a, b = vc.pseudobulk.split_halves(sim, seed=3)
    full = vc.pseudobulk.pseudobulk(sim)
    assert (a.obs_names == b.obs_names).all()
    n_a, n_b = a.obs["n_cells"].to_numpy(), b.obs["n_cells"].to_numpy()
    np.testing.assert_array_equal(n_a + n_b, full.obs.loc[a.obs_names, "n_cells"])
    assert (np.abs(n_a - n_b) <= 1).all()
    # size-weighted mean of the halves is the full pseudobulk: the halves partition the cells
    recombined = (n_a[:, None] * a.X + n_b[:, None] * b.X) / (n_a + n_b)[:, None]
    np.testing.assert_allclose(recombined, full[a.obs_names].X, atol=1e-12)
    assert not np.allclose(a.X, b.X)


def test_split_halves_deterministic_for_seed(sim):
    a1, _ = vc.pseudobulk.split_halves(sim, seed=1)
    a2, _ = vc.pseudobulk.split_halves(sim, seed=1)
    a3, _ = vc.pseudobulk.split_halves(sim, seed=2)
    np.testing.assert_array_equal(a1.X, a2.X)
    assert not np.array_equal(a1.X, a3.X)


def test_deltas_subtract_own_context_control(sim):
    pb = vc.pseudobulk.pseudobulk(sim)
    d = vc.pseudobulk.deltas(pb)
    name = d.obs_names[5]
    context = d.obs.loc[name, "context"]
    np.testing.assert_allclose(d[name].X, pb[name].X - pb[f"{context}|control"].X)
    assert len(d) == len(pb) - pb.obs["is_control"].sum()


def test_missing_column_is_named(sim):
    with pytest.raises(vc.schema.VclibInputError, match="no column 'donor'"):
        vc.pseudobulk.pseudobulk(sim, context_key="donor")
