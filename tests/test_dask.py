"""The dask path (issue 13): lazy reading and the chunked kernels give the in-memory results, under the threaded
scheduler and on a distributed.LocalCluster; the in-memory path never needs dask."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import vclib as vc
from vclib.schema import VclibInputError

da = pytest.importorskip("dask.array")

CHUNKINGS = (7, 50, None)  # None: all rows in one chunk


def _counts(sim: ad.AnnData, *, dense: bool = False) -> ad.AnnData:
    """The simulator's raw counts as a user's file would hold them."""
    X = sim.layers["counts"]
    return ad.AnnData(X=X.toarray() if dense else X.copy(), obs=sim.obs[["perturbation", "context"]].copy(),
                      var=sim.var.copy())


def _dense(X) -> np.ndarray:
    X = X.compute() if vc.schema.is_dask(X) else X
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


def test_in_memory_path_never_needs_dask():
    """`import vclib` does not import dask, and the in-memory path (read, pseudobulk, halves, DE, control-cell
    distances) runs with dask made unimportable. (anndata >= 0.11 itself imports dask.array when dask is installed,
    so once anndata is loaded "dask not in sys.modules" is anndata's doing; what vclib owes is to never need it.)"""
    code = """
import sys
import vclib as vc
assert "dask" not in sys.modules, "import vclib imported dask"
sys.modules["dask"] = None  # import dask now raises ImportError; anndata's find_spec sees no dask
sim = vc.loaders.simulate(n_perturbations=4, n_genes=40, cells_per_condition=12)
counts = sim.copy()
counts.X = counts.layers["counts"]
adata = vc.loaders.read(counts)
vc.pseudobulk.pseudobulk(adata), vc.pseudobulk.split_halves(adata), vc.metrics.rank_genes(adata)
vc.coverage.control_distances(adata, n_pcs=5)
print("ok", [m for m in sys.modules if m.startswith("dask") and sys.modules[m] is not None])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "ok []"


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data")
@pytest.mark.parametrize("store", ["h5ad", "zarr", "h5ad-dense", "anndata"])
def test_lazy_read_equals_in_memory_read(sim, tmp_path, store):
    counts = _counts(sim, dense=store == "h5ad-dense")
    source = counts
    if store != "anndata":
        source = tmp_path / ("a.zarr" if store == "zarr" else "a.h5ad")
        counts.write_zarr(source) if store == "zarr" else counts.write_h5ad(source)
    before = counts.X.copy()
    expected = vc.loaders.read(counts)
    lazy = vc.loaders.read(source, chunks=50)
    assert vc.schema.is_dask(lazy.X) and lazy.X.chunks[0][0] == 50
    assert lazy.uns["vclib"] == {**expected.uns["vclib"], "source": lazy.uns["vclib"]["source"]}
    assert lazy.obs.equals(expected.obs)
    np.testing.assert_array_equal(_dense(lazy.X), _dense(expected.X))  # the same float32 values, not only close
    np.testing.assert_array_equal(_dense(lazy.layers["counts"]), _dense(expected.layers["counts"]))
    np.testing.assert_array_equal(_dense(counts.X), _dense(before))  # the user's AnnData is untouched


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("dense", [False, True])
def test_pseudobulk_and_halves_equal_in_memory(sim, chunks, dense):
    counts = _counts(sim, dense=dense)
    expected = vc.loaders.read(counts)
    lazy = vc.loaders.read(counts, chunks=chunks or counts.n_obs)
    pb, pb_lazy = vc.pseudobulk.pseudobulk(expected), vc.pseudobulk.pseudobulk(lazy)
    assert pb_lazy.obs.equals(pb.obs)
    np.testing.assert_allclose(pb_lazy.X, pb.X, rtol=0, atol=1e-10)
    for half, half_lazy in zip(vc.pseudobulk.split_halves(expected, seed=3), vc.pseudobulk.split_halves(lazy, seed=3),
                               strict=True):
        assert half_lazy.obs.equals(half.obs)
        np.testing.assert_allclose(half_lazy.X, half.X, rtol=0, atol=1e-10)


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("dense", [False, True])
def test_rank_genes_equals_in_memory(sim, chunks, dense):
    """Each gene block is ranked by the in-memory code on every cell's values of those genes: identical numbers,
    whatever the cell chunks and gene blocks (1 is raised to 2: see _dask_rank)."""
    counts = _counts(sim, dense=dense)
    expected = vc.metrics.rank_genes(vc.loaders.read(counts))
    lazy = vc.loaders.read(counts, chunks=chunks or counts.n_obs)
    for gene_block in (None, 1, 17):
        de = vc.metrics.rank_genes(lazy, gene_block=gene_block)
        assert de.conditions.equals(expected.conditions) and de.genes.equals(expected.genes)
        for name in ("lfc", "pvalue", "fdr"):
            np.testing.assert_allclose(getattr(de, name), getattr(expected, name), rtol=0, atol=1e-10)


def test_rank_genes_of_dask_input_against_scipy(sim):
    from scipy.stats import mannwhitneyu

    lazy = vc.loaders.read(_counts(sim), chunks=64)
    de = vc.metrics.rank_genes(lazy, gene_block=9)
    X = _dense(lazy.X).astype(np.float64)  # scipy computes float32 input in float32
    obs = lazy.obs
    for i in (0, 7, len(de.conditions) - 1):
        ctx, pert = de.conditions.iloc[i][["context", "perturbation"]]
        in_ctx = (obs["context"] == ctx).to_numpy()
        cells, ctrl = X[in_ctx & (obs["perturbation"] == pert).to_numpy()], X[in_ctx & (obs["perturbation"] ==
                                                                                          "control").to_numpy()]
        for g in (0, 50, 119):
            expected = mannwhitneyu(cells[:, g], ctrl[:, g], method="asymptotic", use_continuity=True).pvalue
            assert de.pvalue[i, g] == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_prepared_observation_on_dask_input_scores_as_in_memory(sim):
    """prepare/Observed take a dask-backed AnnData: the noise ceiling (halves, their pseudobulks and DE) and evaluate
    give the in-memory tables."""
    counts = _counts(sim)
    memory, lazy = vc.metrics.prepare(vc.loaders.read(counts)), vc.metrics.prepare(vc.loaders.read(counts, chunks=64))
    assert lazy.fingerprint == vc.metrics.prepare(vc.loaders.read(counts, chunks=64)).fingerprint
    pb = memory.pseudobulk
    pred = vc.baselines.TrainingMean().fit(pb).predict(pb.obs_names[~pb.obs["is_control"].to_numpy()])
    for expected, got in [(vc.metrics.ceiling(memory, seed=1), vc.metrics.ceiling(lazy, seed=1)),
                          (vc.metrics.evaluate(pred, memory), vc.metrics.evaluate(pred, lazy))]:
        keys = [c for c in expected.columns if c != "value"]
        both = expected.merge(got, on=keys, suffixes=("", "_dask"), validate="one_to_one")
        assert len(both) == len(expected) == len(got)
        np.testing.assert_allclose(both["value_dask"], both["value"], rtol=0, atol=1e-10)


def test_prepare_refuses_nan_in_dask_input_naming_the_condition(sim):
    X = sim.X.toarray()
    X[5, 3] = np.inf
    bad = ad.AnnData(X=X, obs=sim.obs[["perturbation", "context"]].copy(), var=sim.var.copy(),
                     uns={"vclib": {"values": "log1p"}})
    lazy = ad.AnnData(X=da.from_array(X, chunks=(100, -1)), obs=bad.obs, var=bad.var, uns=bad.uns)
    condition = f"{sim.obs['context'].iloc[5]}|{sim.obs['perturbation'].iloc[5]}"
    for data in (bad, lazy):
        with pytest.raises(VclibInputError, match=rf"NaN or inf in 1 condition\(s\): '{condition}'"):
            vc.metrics.prepare(data)


def test_group_means_of_raw_counts_chunk_by_chunk(sim):
    """values='counts' normalises each chunk first (as the backed path does): the same means as log1p input."""
    codes = sim.obs["perturbation"].cat.codes.to_numpy().astype(np.int64)
    n = int(codes.max()) + 1
    expected, sizes = vc.pseudobulk.group_means(sim.X, codes, n)
    lazy = da.from_array(sim.layers["counts"], chunks=(33, -1), asarray=False)
    means, lazy_sizes = vc.pseudobulk.group_means(lazy, codes, n, values="counts")
    np.testing.assert_array_equal(lazy_sizes, sizes)
    np.testing.assert_allclose(means, expected, rtol=0, atol=1e-6)  # float32 (simulator) vs float64 normalisation


def test_lazy_read_refuses_bad_values_naming_the_cells(sim, tmp_path):
    """One parallel pass finds the chunk; the message names the cell as the in-memory check does."""
    X = sim.X.toarray()
    X[123, 4] = -2
    bad = ad.AnnData(X=X, obs=sim.obs[["perturbation", "context"]].copy(), var=sim.var.copy())
    with pytest.raises(VclibInputError, match=f"negative values .*cells {sim.obs_names[123]}"):
        vc.loaders.read(bad, chunks=50, values="log1p")
    X[123, 4] = np.nan
    with pytest.raises(VclibInputError, match=f"NaN or infinite .*cells {sim.obs_names[123]}"):
        vc.loaders.read(bad, chunks=50, values="log1p")


def test_lazy_read_refuses_bad_options(sim, tmp_path):
    counts = _counts(sim)
    with pytest.raises(VclibInputError, match="positive integer"):
        vc.loaders.read(counts, chunks=0)
    with pytest.raises(VclibInputError, match="not both"):
        vc.loaders.read(counts, chunks=10, backed=True)
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(VclibInputError, match=r"\.h5ad files and \.zarr stores"):
        vc.loaders.read(tmp_path / "x.csv", chunks=10)
    (tmp_path / "broken.h5ad").write_text("not hdf5")
    with pytest.raises(VclibInputError, match="cannot read .* lazily"):
        vc.loaders.read(tmp_path / "broken.h5ad", chunks=10)


def test_on_a_local_cluster_of_two_processes(sim, tmp_path):
    """The same results with a distributed.Client active (two worker processes): the graph, file reads included,
    travels to other processes."""
    distributed = pytest.importorskip("distributed")
    counts = _counts(sim)
    counts.write_h5ad(tmp_path / "a.h5ad")
    expected = vc.loaders.read(counts)
    pb, de = vc.pseudobulk.pseudobulk(expected), vc.metrics.rank_genes(expected)
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        lazy = vc.loaders.read(tmp_path / "a.h5ad", chunks=100)
        pb_lazy, de_lazy = vc.pseudobulk.pseudobulk(lazy), vc.metrics.rank_genes(lazy, gene_block=40)
        assert len(client.scheduler_info()["workers"]) == 2
    np.testing.assert_allclose(pb_lazy.X, pb.X, rtol=0, atol=1e-10)
    for name in ("lfc", "pvalue", "fdr"):
        np.testing.assert_allclose(getattr(de_lazy, name), getattr(de, name), rtol=0, atol=1e-10)
