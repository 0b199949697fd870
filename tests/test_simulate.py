"""The embedded context simulator: deterministic, in the contract, and its ground truth is right."""

from __future__ import annotations

import numpy as np
import pytest

import vclib as vc
from vclib.loaders._simulate import _expected_log1p

SMALL = {"n_contexts": 3, "n_perturbations": 10, "n_combinations": 3, "n_genes": 80,
         "cells_per_condition": 15, "control_cells": 30}


def _true_deltas(adata) -> dict[str, np.ndarray]:
    """Ground-truth deltas (truth minus the same context's control truth), perturbations × genes per context."""
    sim = adata.uns["simulation"]
    names = [str(n) for n in sim["truth_conditions"]]
    truth = np.asarray(sim["truth"], dtype=np.float64)
    out = {}
    for c in sim["contexts"]:
        rows = [i for i, n in enumerate(names) if n.startswith(f"{c}|") and not n.endswith("|control")]
        out[str(c)] = truth[rows] - truth[names.index(f"{c}|control")]
    return out


def _mean_cross_context_correlation(adata) -> float:
    d = list(_true_deltas(adata).values())
    r = [np.mean([np.corrcoef(a[p], b[p])[0, 1] for p in range(len(a))])
         for i, a in enumerate(d) for b in d[i + 1:]]
    return float(np.mean(r))


def test_deterministic_for_a_seed():
    a = vc.loaders.simulate(**SMALL, seed=3)
    b = vc.loaders.simulate(**SMALL, seed=3)
    c = vc.loaders.simulate(**SMALL, seed=4)
    assert (a.layers["counts"] != b.layers["counts"]).nnz == 0
    assert (a.obs == b.obs).all().all()
    assert a.shape != c.shape or (a.layers["counts"] != c.layers["counts"]).nnz > 0


def test_design_and_contract():
    adata = vc.loaders.simulate(**SMALL, coverage=0.5, seed=1)
    vc.schema.validate(adata)
    counts = adata.layers["counts"].data
    assert np.array_equal(counts, np.round(counts))
    table = vc.coverage.cell_counts(adata)
    assert list(table.columns) == ["C1", "C2", "C3"]
    assert (table.loc["control"] == 30).all()
    perturbed = table.drop(index="control")
    combos = [p for p in perturbed.index if "+" in p]
    assert len(combos) == 3 and len(perturbed) == 13
    assert (perturbed["C1"] == 15).all()  # the first context measures everything
    assert ((perturbed[["C2", "C3"]] > 0).sum() == round(0.5 * 13)).all()
    for combo in combos:  # combinations pair perturbations of the design
        assert all(t in perturbed.index for t in vc.schema.targets(combo))


def test_knockdown_lowers_its_target():
    adata = vc.loaders.simulate(**SMALL, seed=2)
    deltas = _true_deltas(adata)["C1"]
    singles = [n.split("|")[1] for n in adata.uns["simulation"]["truth_conditions"]
               if n.startswith("C1|") and n != "C1|control"]
    own = [deltas[i, list(adata.var_names).index(p)] for i, p in enumerate(singles) if "+" not in p]
    assert np.all(np.array(own) < 0)


def test_truth_matches_monte_carlo_expectation():
    """Independent check of the closed-form expectation: average many simulated cells by brute force."""
    rng = np.random.default_rng(0)
    eta = rng.normal(0, 1.5, (2, 60))
    truth = _expected_log1p(eta, library_size=3000, library_sd=0.3, dispersion=5)
    n = 100_000
    for row, expected in zip(eta, truth, strict=True):
        p = np.exp(row - row.max())
        p /= p.sum()
        size = 3000 * np.exp(rng.normal(-0.045, 0.3, n))
        counts = rng.poisson(rng.gamma(5, 1 / 5, (n, 60)) * size[:, None] * p)
        monte_carlo = np.log1p(1e4 * counts / counts.sum(axis=1, keepdims=True)).mean(axis=0)
        np.testing.assert_allclose(expected, monte_carlo, atol=0.015)


def test_truth_sums_each_grid_block_to_its_own_tail():
    """Summing each block of grid means only to its own 1 - 1e-12 quantile changes nothing measurable: one block
    (every mean summed to the largest mean's quantile, the plain sum) gives the same truth. Few genes (large
    means, a long pmf) is the case where the two sums differ most in length."""
    eta = np.random.default_rng(1).normal(0, 1.5, (3, 50))
    settings = {"library_size": 4000, "library_sd": 0.3, "dispersion": 5}
    blocked = _expected_log1p(eta, **settings)
    plain = _expected_log1p(eta, **settings, block=200)
    np.testing.assert_allclose(blocked, plain, rtol=0, atol=1e-10)


def test_truth_matches_many_simulated_cells():
    """The observed pseudobulk scatters around the truth as sampling noise predicts (z-scores ~ N(0, 1))."""
    adata = vc.loaders.simulate(n_contexts=2, n_perturbations=4, n_combinations=1, n_genes=500,
                                cells_per_condition=3000, control_cells=3000, seed=5)
    pb = vc.pseudobulk.pseudobulk(adata)
    names = [str(n) for n in adata.uns["simulation"]["truth_conditions"]]
    truth = adata.uns["simulation"]["truth"][[names.index(n) for n in pb.obs_names]]
    X = adata.X.toarray().astype(np.float64)
    keys = (adata.obs["context"].astype(str) + "|" + adata.obs["perturbation"].astype(str)).to_numpy()
    se = np.vstack([X[keys == n].std(axis=0, ddof=1) / np.sqrt((keys == n).sum()) for n in pb.obs_names])
    error = np.asarray(pb.X) - truth
    z = error[se > 0] / se[se > 0]
    assert np.abs(z).max() < 6
    assert abs(np.mean(z)) < 0.1 and 0.8 < np.std(z) < 1.25
    assert abs(error.mean()) < 0.005


def test_divergence_controls_shared_mechanisms():
    same = vc.loaders.simulate(**SMALL, context_divergence=0.0, seed=1)
    unrelated = vc.loaders.simulate(**SMALL, context_divergence=1.0, seed=1)
    np.testing.assert_array_equal(same.uns["simulation"]["mechanism_overlap"], 1.0)
    overlap = unrelated.uns["simulation"]["mechanism_overlap"]
    t = unrelated.uns["simulation"]["positions"]  # 0.5, 0.75, 1: the last context is unrelated to all
    assert overlap[2, :2].max() == 0.0
    assert overlap[0, 1] < 0.5  # expected (1 - 0.5)(1 - 0.75) = 0.125
    np.testing.assert_allclose(t, [0.5, 0.75, 1.0])
    r = [_mean_cross_context_correlation(vc.loaders.simulate(**SMALL, context_divergence=d, seed=1))
         for d in (0.0, 0.5, 1.0)]
    assert r[0] > r[1] > r[2]
    assert r[0] > 0.8 and r[2] < 0.5


def test_distant_contexts_differ_more_in_state_and_mechanism():
    """Control distance tracks mechanism divergence: the farther context pair shares fewer mechanisms."""
    adata = vc.loaders.simulate(n_contexts=5, n_perturbations=40, n_genes=200, context_divergence=0.8, seed=4)
    sim = adata.uns["simulation"]
    pb = vc.pseudobulk.pseudobulk(adata)
    controls = np.vstack([np.asarray(pb[f"{c}|control"].X)[0] for c in sim["contexts"]])
    near = np.linalg.norm(controls[0] - controls[1])
    far = np.linalg.norm(controls[3] - controls[4])
    assert far > near
    assert sim["mechanism_overlap"][3, 4] < sim["mechanism_overlap"][0, 1]


@pytest.mark.parametrize(("option", "value", "message"), [
    ("context_divergence", 1.5, r"context_divergence must be in \[0, 1\]"),
    ("coverage", 0.0, r"coverage must be in \(0, 1\]"),
    ("n_perturbations", 500, r"cannot exceed n_genes"),
])
def test_bad_parameters(option, value, message):
    with pytest.raises(ValueError, match=message):
        vc.loaders.simulate(**{**SMALL, option: value})
