"""Coverage versus capacity (vc.capacity): parameter counts in closed form, the grid against benchmark.run run by
hand, the same conditions at every coverage, summaries against a naive mean, and verdicts on tables whose answer is
known by construction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import vclib as vc
from vclib.schema import VclibInputError


@pytest.fixture(scope="module")
def grid(_small_sim):
    return vc.capacity.run(_small_sim, widths=(2, 8), progress=False)


def test_parameter_count_is_the_networks_weights_and_biases(sim):
    train = vc.pseudobulk.pseudobulk(sim)
    for width, depth in [(3, 1), (5, 2), (7, 3)]:
        model = vc.models.MLP(width=width, depth=depth, max_iter=5).fit(train)
        n_in, n_out = model.network_.n_features_in_, model.network_.n_outputs_
        sizes = [n_in, *([width] * depth), n_out]
        expected = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))  # weights + biases per layer
        assert model.n_parameters_ == expected


def test_grid_is_benchmark_run_on_the_conditions_held_out_at_every_coverage(_small_sim, grid):
    assert sorted(grid["coverage"].unique()) == [0.0, 0.1, 0.25, 0.5]
    assert set(grid["model"]) == {"mlp_w2", "mlp_w8"} and "ceiling" not in set(grid["model"])
    # every coverage is scored on the same conditions, fold by fold
    per_split = grid.groupby(["split", "fold"])[["context", "perturbation"]].apply(
        lambda t: frozenset(map(tuple, t.to_numpy())))
    for fold, sets in per_split.groupby(level="fold"):
        assert len(set(sets)) == 1, fold
    # ... which are the test conditions common to every split of that fold, and nothing else
    tables = vc.splits.few_shot_context(_small_sim)
    for fold in tables["fold"].unique():
        tests = [set(tables[(tables["split"] == s) & (tables["fold"] == fold) & (tables["role"] == "test")][
            ["context", "perturbation"]].itertuples(index=False, name=None)) for s in tables["split"].unique()]
        got = set(grid[grid["fold"] == fold][["context", "perturbation"]].itertuples(index=False, name=None))
        assert got == set.intersection(*tests)
    # the values are benchmark.run's for the same model on the same split table
    by_hand = vc.benchmark.run(_small_sim, splits=tables, models={"mlp_w8": vc.models.MLP(width=8)},
                               metrics=["mse_delta", "pearson_delta"], include_ceiling=False, progress=False)
    keys = ["split", "fold", "context", "perturbation", "metric"]
    merged = grid[grid["model"] == "mlp_w8"].merge(by_hand, on=keys, suffixes=("", "_hand"))
    assert len(merged) == (grid["model"] == "mlp_w8").sum()
    np.testing.assert_allclose(merged["value"], merged["value_hand"], rtol=0, atol=0)


def test_parameters_column_matches_a_model_fitted_by_hand(_small_sim, grid):
    tables = vc.splits.few_shot_context(_small_sim)
    split, fold = vc.splits.folds(tables)[0]
    train = vc.splits.training_data(vc.pseudobulk.pseudobulk(_small_sim), tables, split, fold)
    for width in (2, 8):
        expected = vc.models.MLP(width=width).fit(train).n_parameters_
        assert set(grid.loc[grid["width"] == width, "parameters"]) == {expected}


def test_summary_means_are_the_naive_means(grid):
    summary = vc.capacity.summary(grid, metric="pearson_delta")
    for row in summary.itertuples():
        rows = grid[(grid["metric"] == "pearson_delta") & (grid["coverage"] == row.coverage)
                    & (grid["width"] == row.width)]
        assert row.mean == pytest.approx(rows["value"].mean(), abs=1e-12)
        assert row.ci_low <= row.mean <= row.ci_high and row.n == rows["perturbation"].nunique()


def _table(value, *, n=12, coverages=(0.0, 0.5), widths=(2, 200)):
    """A grid whose mse_delta is value(coverage, width, i) for condition i (small jitter keeps CIs finite)."""
    return pd.DataFrame([{"context": "c", "perturbation": f"p{i}", "metric": "mse_delta", "fold": "c", "seed": 0,
                          "coverage": f, "width": w, "parameters": 10 * w, "value": value(f, w, i)}
                         for i in range(n) for f in coverages for w in widths])


@pytest.mark.parametrize(("value", "last", "helps"), [
    (lambda f, w, i: 1.0 - f + 0.01 * (i % 3), "More coverage of the target context helped more than more capacity.",
     "Capacity helped beyond the noise at no coverage."),
    (lambda f, w, i: 1.0 - w / 400 + 0.01 * (i % 3), "More capacity helped more than more coverage of the target "
     "context.", "Capacity helped beyond the noise at f = 0, 0.5."),
    (lambda f, w, i: 1.0 + 0.01 * (i % 3), "Neither more coverage nor more capacity helped clearly more than the "
     "other.", "Capacity helped beyond the noise at no coverage."),
    # capacity helps only once part of the context is measured
    (lambda f, w, i: 1.0 - (f * w / 200) + 0.01 * (i % 3), "Coverage and capacity helped together: the larger model "
     "used the measured part of the target context, and capacity did not help where none of it was measured (f = 0).",
     "Capacity helped beyond the noise at f = 0.5."),
])
def test_verdict_on_grids_with_a_known_answer(value, last, helps):
    text = vc.capacity.verdict(_table(value))
    lines = text.splitlines()
    assert lines[-1] == last and lines[-2] == helps
    assert "On 12 conditions" in lines[0] and "20 → 2,000 parameters (100×)" in text


def test_verdict_differences_are_the_paired_means():
    table = _table(lambda f, w, i: 1.0 - f + 0.01 * i)
    text = vc.capacity.verdict(table)
    cover = table[table["width"] == 2].pivot(index="perturbation", columns="coverage", values="value")
    assert f"{(cover[0.5] - cover[0.0]).mean():+.3g}" in text  # −0.5, the same for every condition


def test_verdict_says_when_the_data_cannot_answer():
    assert vc.capacity.verdict(_table(lambda f, w, i: 1.0, n=3)).startswith(
        "No verdict on coverage versus capacity: only 3 conditions")
    assert vc.capacity.verdict(_table(lambda f, w, i: 1.0, coverages=(0.0,))).startswith(
        "No verdict on coverage versus capacity for mse_delta: it needs at least two coverages")


def test_one_context_gives_an_empty_grid_with_the_reason():
    one = vc.loaders.simulate(n_contexts=1, n_perturbations=8, n_combinations=0, n_genes=60, cells_per_condition=10,
                              control_cells=20, seed=1)
    grid = vc.capacity.run(one, widths=(2, 8), progress=False)
    assert grid.empty and {"coverage", "width", "parameters"} <= set(grid.columns)
    assert "context" in grid.attrs["skipped"][0]["reason"]
    assert vc.capacity.summary(grid).attrs["skipped"] == grid.attrs["skipped"]
    assert vc.capacity.verdict(grid).startswith("No verdict")


def test_bad_widths_are_refused(sim):
    with pytest.raises(VclibInputError, match="widths is empty"):
        vc.capacity.run(sim, widths=())
