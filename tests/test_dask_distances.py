"""Control-cell distances on a dask X (issue 13): the chunked PCA (moments and Gram matrix summed over chunks, eigh in
memory) gives the in-memory E-distance, correlation distance and scores, whatever the chunking, without ever holding
the cells × genes matrix."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import vclib as vc
from vclib.coverage import _distances

da = pytest.importorskip("dask.array")

CHUNKINGS = (7, 50, 333, None)  # the simulator's 1,020 cells: none divides it; None: all rows in one chunk
KEYS = ["context_a", "context_b", "n_control_a", "n_control_b", "note"]


def _write(sim: ad.AnnData, path, *, dense: bool = False):
    """The simulator's raw counts as a user's h5ad file would hold them."""
    X = sim.layers["counts"]
    ad.AnnData(X=X.toarray() if dense else X.copy(), obs=sim.obs[["perturbation", "context"]].copy(),
               var=sim.var.copy()).write_h5ad(path)
    return path


def _pair(sim, tmp_path, values: str, chunks: int | None) -> tuple[ad.AnnData, ad.AnnData]:
    """(in memory, dask) views of one file. ``log1p``: the loader normalises (per chunk for dask, into float32 as in
    memory); ``counts``: X holds raw counts that control_distances normalises itself, as for a backed file."""
    path = _write(sim, tmp_path / "a.h5ad", dense=values == "log1p-dense")
    lazy = vc.loaders.read(path, chunks=chunks or sim.n_obs)
    if values == "counts":
        memory = vc.loaders.read(path, backed=True)
        assert memory.uns["vclib"]["values"] == "counts"
        lazy = ad.AnnData(X=lazy.layers["counts"], obs=lazy.obs, var=lazy.var,
                          uns={"vclib": {**lazy.uns["vclib"], "values": "counts"}})
    else:
        memory = vc.loaders.read(path)
    assert vc.schema.is_dask(lazy.X) and not vc.schema.is_dask(memory.X)
    return memory, lazy


def _assert_same_table(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got[KEYS], expected[KEYS])
    for column in ("edistance", "correlation_distance"):
        assert expected[column].notna().all()
        np.testing.assert_allclose(got[column], expected[column], rtol=0, atol=1e-10)


def _control_rows(adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    rows = np.flatnonzero((adata.obs["perturbation"] == "control").to_numpy())
    return rows, pd.Index(sorted(set(adata.obs["context"]))).get_indexer(adata.obs["context"].iloc[rows])


def _moments(X, codes: np.ndarray) -> np.ndarray:
    n_groups = int(codes.max()) + 1
    (moments,) = _distances._computed(_distances._summed(_distances._moments, X, n_groups, codes=codes,
                                                         shape=(n_groups + 1, X.shape[1])))
    return moments


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("values", ["log1p", "log1p-dense", "counts"])
def test_control_distances_equal_in_memory(sim, tmp_path, chunks, values):
    memory, lazy = _pair(sim, tmp_path, values, chunks)
    for options in ({}, {"n_pcs": 10, "n_top_genes": 60}):
        _assert_same_table(vc.coverage.control_distances(lazy, **options),
                           vc.coverage.control_distances(memory, **options))
    if chunks == 50 and values == "log1p":  # pertpy's variant: the same scores go through the pairwise code
        options = {"metric": "euclidean", "sample_correct": False}
        _assert_same_table(vc.coverage.control_distances(lazy, **options),
                           vc.coverage.control_distances(memory, **options))


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_pca_scores_equal_in_memory(sim, tmp_path, chunks):
    memory, lazy = _pair(sim, tmp_path, "log1p", chunks)
    rows, codes = _control_rows(memory)
    X, X_lazy = _distances._control_matrix(memory, rows), _distances._control_matrix(lazy, rows)
    assert vc.schema.is_dask(X_lazy)
    moments, moments_lazy = _moments(X, codes), _moments(X_lazy, codes)
    np.testing.assert_allclose(moments_lazy, moments, rtol=1e-13, atol=0)
    scores = _distances._pca(X, moments, n_pcs=10, n_top_genes=60)
    scores_lazy = _distances._pca(X_lazy, moments_lazy, n_pcs=10, n_top_genes=60)
    assert scores_lazy.shape == scores.shape == (len(rows), 10)
    np.testing.assert_allclose(scores_lazy, scores, rtol=0, atol=1e-10)


@pytest.mark.parametrize("chunks", (7, 333))
@pytest.mark.parametrize("values", ["log1p", "counts"])
def test_chunked_covariance_against_numpy(sim, tmp_path, chunks, values):
    """Moments, gene choice, means and covariance of the chunked path against numpy on the dense control matrix; for
    raw counts the matrix is normalised here by hand (log1p of counts scaled to 10,000 per cell), not by scanpy."""
    memory, lazy = _pair(sim, tmp_path, values, chunks)
    rows, codes = _control_rows(memory)
    if values == "counts":
        counts = sim.layers["counts"][rows].toarray().astype(np.float64)
        dense = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    else:
        dense = memory.X[rows].toarray().astype(np.float64)  # the loader's float32 log1p values, read whole
    X = _distances._control_matrix(lazy, rows)
    moments = _moments(X, codes)
    np.testing.assert_allclose(moments[:-1], [dense[codes == k].sum(axis=0) for k in range(3)], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(moments[-1], (dense**2).sum(axis=0), rtol=1e-12, atol=1e-9)
    genes, mean, cov = _distances._covariance(X, moments, n_top_genes=60)
    variance = dense.var(axis=0)
    np.testing.assert_array_equal(genes, np.sort(np.argsort(-variance)[:60]))
    assert variance[genes].min() > np.delete(variance, genes).max()  # no tie at the cut
    np.testing.assert_allclose(mean, dense[:, genes].mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(dense[:, genes], rowvar=False), rtol=0, atol=1e-10)


def test_max_cells_subsets_the_same_cells(sim, tmp_path):
    """The subset is drawn from obs alone, so both paths use the same cells; the check can fail because the subset
    matters: another seed, or all cells, give other distances."""
    memory, lazy = _pair(sim, tmp_path, "log1p", 50)
    table = vc.coverage.control_distances(memory, max_cells=15, seed=3)
    _assert_same_table(vc.coverage.control_distances(lazy, max_cells=15, seed=3), table)
    assert table["note"].str.contains("at most 15 control cells").all()
    for other in (vc.coverage.control_distances(lazy, max_cells=15, seed=4), vc.coverage.control_distances(lazy)):
        assert np.abs(other["edistance"] - table["edistance"]).min() > 1e-3


def test_dask_path_never_holds_the_cells_by_genes_matrix(sim, tmp_path, monkeypatch):
    """No task returns more rows of all genes than a chunk holds, and the lazy matrix is never computed or
    converted whole: what reaches memory are moments, a Gram matrix and the scores."""
    from dask.callbacks import Callback

    memory, lazy = _pair(sim, tmp_path, "log1p", 50)
    expected = vc.coverage.control_distances(memory, n_pcs=10, n_top_genes=60)
    widest = []

    class Rows(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            if (isinstance(result, np.ndarray) or sparse.issparse(result)) and result.ndim == 2 \
                    and result.shape[1] == sim.n_vars:
                widest.append(result.shape[0])

    def refuse(self, *args, **kwargs):
        raise AssertionError("the whole dask matrix was asked for")

    monkeypatch.setattr(da.Array, "compute", refuse)
    monkeypatch.setattr(da.Array, "__array__", refuse)
    with Rows():
        table = vc.coverage.control_distances(lazy, n_pcs=10, n_top_genes=60)
    assert widest and max(widest) <= 50
    _assert_same_table(table, expected)


def test_control_distances_on_a_local_cluster_of_two_processes(sim, tmp_path):
    """With a distributed.Client active, the three passes (file reads included) run on two worker processes."""
    distributed = pytest.importorskip("distributed")
    memory, _ = _pair(sim, tmp_path, "log1p", 64)
    expected = vc.coverage.control_distances(memory, n_pcs=10, n_top_genes=60)
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        lazy = vc.loaders.read(tmp_path / "a.h5ad", chunks=64)
        table = vc.coverage.control_distances(lazy, n_pcs=10, n_top_genes=60)
        assert len(client.scheduler_info()["workers"]) == 2
    _assert_same_table(table, expected)
