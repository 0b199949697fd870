"""Reliability: the benchmark cache never returns a stale cell, a cached re-run is bit-identical, figures are
deterministic for a seed, and vclib never replaces a file it did not create."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import vclib as vc
from vclib.schema import VclibInputError


@pytest.fixture(scope="module")
def sim():
    return vc.loaders.simulate(n_contexts=2, n_perturbations=8, n_genes=60, cells_per_condition=20, seed=0)


@pytest.fixture
def computed(monkeypatch):
    """The grid cells run() computes (rather than reads from its cache), as (model, split, fold) tuples."""
    calls = []
    real = vc.benchmark._score_cell

    def counting(obs, model, name, table, split, fold, *args):
        calls.append((name, split, str(fold)))
        return real(obs, model, name, table, split, fold, *args)

    monkeypatch.setattr(vc.benchmark, "_score_cell", counting)
    return calls


def _mse(table, model="ext"):
    return table.loc[(table["model"] == model) & (table["metric"] == "mse_delta"), "value"]


OPTIONS = {"splits": ["unseen_context"], "metrics": ["mse_delta"], "include_ceiling": False, "progress": False}


@pytest.mark.parametrize("where", ["file", "memory"])
def test_changed_predictions_are_rescored(sim, tmp_path, computed, where):
    perfect = vc.pseudobulk.pseudobulk(sim)
    path = tmp_path / "pred.h5ad"
    perfect.write_h5ad(path)
    source = str(path) if where == "file" else perfect

    def scores():
        return vc.benchmark.run(sim, models={"ext": vc.models.ExternalPredictions(source)},
                                results_dir=tmp_path / "bench", **OPTIONS)

    assert np.allclose(_mse(scores()), 0.0)
    n_folds = len(computed)
    assert n_folds == 2  # one cell per held-out context
    scores()
    assert len(computed) == n_folds  # unchanged: every cell read back from the cache
    shifted = perfect.copy()
    shifted.X = shifted.X + 0.5
    if where == "file":
        shifted.write_h5ad(path)  # same path, new content
    else:
        perfect.X = shifted.X  # the same object, changed in place
    again = scores()
    assert len(computed) == 2 * n_folds
    assert np.allclose(_mse(again), 0.25)  # every gene off by 0.5: the mean squared error is 0.5² exactly


def test_another_observed_de_is_rescored(sim, tmp_path, computed):
    options = {**OPTIONS, "metrics": ["overlap_at_N"], "models": ["training_mean"], "results_dir": tmp_path}
    de = vc.metrics.rank_genes(sim)
    first = vc.benchmark.run(sim, observed_de=de, **options)
    vc.benchmark.run(sim, observed_de=vc.metrics.rank_genes(sim), **options)  # equal values: reused
    assert len(computed) == 2
    nothing = vc.metrics.rank_genes(sim)
    nothing.pvalue[:] = 1.0
    nothing.fdr[:] = 1.0
    second = vc.benchmark.run(sim, observed_de=nothing, **options)
    assert len(computed) == 4
    assert first["value"].notna().sum() > 20 and second["value"].isna().all()  # no observed DE gene: undefined


def test_changed_observed_data_is_rescored(sim, tmp_path, computed):
    options = {**OPTIONS, "models": ["training_mean"], "results_dir": tmp_path}
    data = sim.copy()
    first = vc.benchmark.run(data, **options)
    vc.benchmark.run(data.copy(), **options)
    assert len(computed) == 2
    data.X = data.X * 2  # every delta doubles, so the error of the training mean grows 4×
    second = vc.benchmark.run(data, **options)
    assert len(computed) == 4
    np.testing.assert_allclose(_mse(second, "training_mean").to_numpy(),
                               4 * _mse(first, "training_mean").to_numpy(), rtol=1e-5)


def test_changed_split_table_rescores_only_its_fold(sim, tmp_path, computed):
    options = {**OPTIONS, "models": ["training_mean", "no_change"], "results_dir": tmp_path}
    table = vc.splits.unseen_context(sim)
    vc.benchmark.run(sim, **{**options, "splits": [table]})
    assert len(computed) == 4
    fold = table["fold"].iloc[0]
    dropped = table.index[(table["fold"] == fold) & (table["role"] == "test")][0]
    vc.benchmark.run(sim, **{**options, "splits": [table.drop(index=dropped)]})
    assert sorted(computed[4:]) == [("no_change", "unseen_context", fold), ("training_mean", "unseen_context", fold)]


def test_cached_rerun_is_bit_identical(sim, tmp_path, computed):
    options = {"splits": ["unseen_context", "unseen_perturbation"], "models": ["training_mean", "linear", "mlp"],
               "split_options": {"unseen_perturbation": {"n_folds": 2}}, "progress": False}
    fresh = vc.benchmark.run(sim, **options)
    first = vc.benchmark.run(sim, results_dir=tmp_path, **options)
    n = len(computed)
    cached = vc.benchmark.run(sim, results_dir=tmp_path, **options)
    assert len(computed) == n  # nothing recomputed
    for table in (first, cached):
        pd.testing.assert_frame_equal(table.drop(columns="value"), fresh.drop(columns="value"), check_dtype=False)
        a, b = fresh["value"].to_numpy(np.float64), table["value"].to_numpy(np.float64)
        assert np.array_equal(np.isnan(a), np.isnan(b))
        assert np.array_equal(a[~np.isnan(a)].view(np.int64), b[~np.isnan(b)].view(np.int64))  # bit for bit


def test_effect_size_figure_is_deterministic_for_a_seed(sim):
    deltas = vc.pseudobulk.deltas(vc.pseudobulk.pseudobulk(sim))

    def points(seed):
        state = np.random.get_state()[1].copy()  # noqa: NPY002 (the global state must stay untouched)
        ax = vc.pl.effect_sizes(deltas, seed=seed)
        assert np.array_equal(np.random.get_state()[1], state)  # noqa: NPY002
        out = ax.collections[-1].get_offsets().copy()
        plt.close(ax.figure)
        return out

    assert np.array_equal(points(0), points(0))
    assert not np.array_equal(points(0), points(1))
    heights = np.sort(points(0)[:, 1])
    np.testing.assert_allclose(heights, np.sort(np.linalg.norm(np.asarray(deltas.X), axis=1)), rtol=1e-6)


def test_benchmark_never_replaces_a_file_it_did_not_create(sim, tmp_path):
    mine = tmp_path / "run_index.csv"
    mine.write_text("my own index\n")
    with pytest.raises(VclibInputError, match=r"holds run_index\.csv, not written by vclib\.benchmark\.run.*never "
                                              r"replaces files it did not create"):
        vc.benchmark.run(sim, models=["training_mean"], results_dir=tmp_path, **OPTIONS)
    assert mine.read_text() == "my own index\n" and sorted(p.name for p in tmp_path.iterdir()) == ["run_index.csv"]
    # a folder vclib made is vclib's to update
    ours = tmp_path / "ours"
    vc.benchmark.run(sim, models=["training_mean"], results_dir=ours, **OPTIONS)
    vc.benchmark.run(sim, models=["no_change"], results_dir=ours, **OPTIONS)
    assert set(pd.read_csv(ours / "run_index.csv")["model"]) == {"no_change"}
