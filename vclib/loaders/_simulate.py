"""The embedded context simulator: single-cell counts with a known ground truth.

Why a structural model and not a GRN dynamics simulator: the benchmark needs (i) a tunable fraction of
regulatory mechanisms that differ between contexts, (ii) the exact expected pseudobulk of every condition,
measured or not, and (iii) a few seconds of build time for ~280 conditions. A linear steady state on the log
scale gives all three in closed form. SERGIO's Rust port (``sergio-rs`` 0.2.3, GPL-3) was measured here: its
cell types share one network (no per-context rewiring), it exposes no noise-free steady state, its knockouts
reach only direct targets (half-responses are recomputed per run), ``ko_perturbation`` mutates the shared
network, and one run per (context, perturbation) took ~0.2 s, ~49 s for the default design.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse, special, stats

from vclib.schema import (
    COMBINATION_SEP,
    CONTEXT_KEY,
    CONTROL,
    COUNTS,
    LOG1P,
    PERTURBATION_KEY,
    TARGET_SUM,
    condition_id,
    normalise,
)


def _regulatory_effects(rng, n_genes, regulators, n_programs, targets_per_regulator):
    """Direct effects W (genes × genes, non-zero only in regulator columns) of one draw of the network."""
    W = np.zeros((n_genes, n_genes))
    program_of = rng.integers(n_programs, size=len(regulators))
    programs = [rng.choice(n_genes, targets_per_regulator, replace=False) for _ in range(n_programs)]
    for j, r in enumerate(regulators):
        shared = programs[program_of[j]]  # regulators of one program act on common targets, with own signs
        own = rng.choice(n_genes, targets_per_regulator // 2, replace=False)
        hits = np.union1d(shared, own)
        hits = hits[hits != r]
        W[hits, r] = rng.normal(0, 0.5, hits.size) + 0.5 * rng.choice([-1, 1])
    return W


def _context_network(rng, W0, divergence, n_programs, regulators, targets_per_regulator):
    """A context's network: each regulator's target set is redrawn with probability ``divergence``."""
    W_new = _regulatory_effects(rng, W0.shape[0], regulators, n_programs, targets_per_regulator)
    rewired = rng.random(len(regulators)) < divergence
    W = W0.copy()
    W[:, regulators[rewired]] = W_new[:, regulators[rewired]]
    return W, float(rewired.mean())


def _expected_log1p(eta, *, library_size, library_sd, dispersion, n_nodes=7, n_grid=200, block=20):
    """E[log1p(1e4 k / (k + R))] for k ~ NB(L p, dispersion), p = softmax(eta), per row of ``eta``.

    ``k + R`` is the cell's realised total count; ``R``, the other genes' counts, is independent of ``k`` with
    mean ``L (1 - p)`` and variance ``V = L (1 - p) + L² (Σp² - p²) / dispersion``. The gene's own share of the
    total is exact (the pmf of ``k`` is summed on a grid of means and interpolated in log mean); the fluctuation
    of ``R`` enters by a second-order expansion, ``E g(R) ≈ g(E R) + g''(E R) V / 2``. The lognormal library
    size ``L`` is integrated with Gauss-Hermite quadrature. See data/README.md.

    Each ``block`` of grid means sums ``k`` up to its own largest 1 − 1e-12 quantile: the grid is geometric, so
    most of it has small means, and summing every row to the largest mean's quantile cost ~60× more (6 s for a
    50-gene screen, whose few genes have large means) for terms below 1e-12.
    """
    p = np.exp(eta - eta.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    nodes, weights = np.polynomial.hermite_e.hermegauss(n_nodes)
    weights = weights / weights.sum()
    sizes = library_size * np.exp(library_sd * nodes - library_sd**2 / 2)
    out = np.zeros_like(p)
    for size, w in zip(sizes, weights, strict=True):
        m = p * size
        grid = np.geomspace(1e-5, m.max() * 1.01, n_grid)
        q = dispersion / (dispersion + grid)
        kmax = stats.nbinom.ppf(1 - 1e-12, dispersion, q).astype(int) + 1
        k = np.arange(kmax.max() + 1)
        log_norm = special.gammaln(k + dispersion) - special.gammaln(dispersion) - special.gammaln(k + 1)
        f, curvature = np.empty(n_grid), np.empty(n_grid)
        for rows in (slice(s, s + block) for s in range(0, n_grid, block)):
            kb = k[: kmax[rows].max() + 1][None, :]
            pmf = np.exp(log_norm[None, : kb.shape[1]] + dispersion * np.log(q[rows])[:, None]
                         + kb * np.log1p(-q[rows])[:, None])
            rest = np.maximum(size - grid[rows], 1e-9)[:, None]  # the other genes' mean counts, L (1 - p)
            total, scaled = kb + rest, (1 + TARGET_SUM) * kb + rest
            f[rows] = (pmf * np.log1p(TARGET_SUM * kb / total)).sum(axis=1)
            curvature[rows] = (pmf * (1 / total**2 - 1 / scaled**2)).sum(axis=1)  # E_k g''(R), g = log(scaled/total)
        variance = size * (1 - p) + size**2 * ((p**2).sum(axis=1, keepdims=True) - p**2) / dispersion
        out += w * (np.interp(np.log(m), np.log(grid), f, left=0.0)
                    + 0.5 * np.interp(np.log(m), np.log(grid), curvature, left=0.0) * variance)
    return out


def simulate(
    *,
    n_contexts: int = 4,
    n_perturbations: int = 60,
    n_combinations: int = 10,
    n_genes: int = 500,
    cells_per_condition: int = 50,
    control_cells: int = 200,
    context_divergence: float = 0.3,
    context_shift: float = 0.5,
    coverage: float = 0.75,
    effect_size: float = 1.0,
    library_size: float = 4000.0,
    dispersion: float = 5.0,
    seed: int | None = 0,
) -> ad.AnnData:
    """Simulate a perturbation screen over several biological contexts, with its noise-free ground truth.

    Generative model (all on the natural-log scale of expression rates):

    * Each context sits at a distance ``t_c`` from a shared reference state, evenly spaced from 0.5 (the first
      context) to 1 (the last): more distant contexts differ more in both state and mechanism, as related cell
      types do.
    * Genes have a shared baseline ``mu0 ~ N(0, 1.5)``; context ``c`` adds ``context_shift * t_c * z_c``
      (``z_c ~ N(0, 1)`` per gene): the contexts' baseline states differ.
    * The first ``n_perturbations`` genes are regulators. A shared network ``W0`` gives each regulator a set
      of targets (common to its program, plus its own) with random signed weights. In context ``c`` each
      regulator's targets are redrawn independently with probability ``context_divergence * t_c`` (0: the same
      mechanisms everywhere; 1: the most distant context unrelated to the reference), so contexts ``a`` and
      ``b`` share a fraction ``(1 - d t_a)(1 - d t_b)`` of mechanisms in expectation.
    * Knocking down regulator ``r`` lowers its own rate by ``2 * effect_size * s_r``, with a strength
      ``s_r ~ Gamma(0.5, 2)`` per regulator (mean 1; many weak knockdowns, few strong ones, so real hits are
      rare as in screens); the effect propagates to the steady state ``delta = (I - W_c)^-1 u``. A combination
      ``A+B`` knocks down both (``u = u_A + u_B``), plus a random interaction for a third of the combinations.
    * Each cell draws a library size ``L ~ library_size * LogNormal(0, 0.3)`` and counts
      ``k_g ~ NegBinom(mean = L * softmax(mu_c + delta)_g, dispersion)``.
    * Every context has ``control_cells`` controls; the first context measures every perturbation, the
      others a random fraction ``coverage`` of them.

    The ground truth is the expected log1p pseudobulk of every context × perturbation, measured or not (see
    data/README.md for how it is computed and checked).

    Parameters
    ----------
    n_contexts, n_perturbations, n_combinations, n_genes
        Design size. Combinations pair perturbations of the design.
    cells_per_condition, control_cells
        Cells per perturbed condition and per context's control.
    context_divergence
        Fraction of regulators' mechanisms redrawn in the most distant context, in [0, 1].
    context_shift
        Scale of the context-specific baseline shift (of the most distant context).
    coverage
        Fraction of perturbations measured in each context after the first, in (0, 1].
    effect_size
        Scale of the knockdown (the mean of the regulators' strengths).
    library_size, dispersion
        Mean counts per cell and negative-binomial dispersion (larger is less noisy).
    seed
        Seed of the local random generator; the same seed gives the same data.

    Returns
    -------
    AnnData in the data contract: ``X`` log1p-normalised (scanpy ``normalize_total(1e4)`` + ``log1p``),
    ``layers["counts"]``, obs ``perturbation``, ``context``, var ``is_regulator``; ``uns["simulation"]``
    holds ``params``, ``truth`` (conditions × genes expected log1p pseudobulk), ``truth_conditions``
    (``"context|perturbation"``), ``truth_measured``, ``rewired`` (fraction redrawn per context) and
    ``mechanism_overlap`` (contexts × contexts fraction of shared mechanisms).

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=6, n_genes=100, seed=1)
    >>> sorted(adata.obs["context"].unique())
    ['C1', 'C2']
    """
    if not 0 <= context_divergence <= 1:
        raise ValueError(f"context_divergence must be in [0, 1], got {context_divergence}.")
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}.")
    if n_perturbations > n_genes:
        raise ValueError(f"n_perturbations ({n_perturbations}) cannot exceed n_genes ({n_genes}).")
    params = {k: v for k, v in locals().items() if k != "params"}
    rng = np.random.default_rng(seed)
    genes = np.array([f"G{i:04d}" for i in range(n_genes)])
    regulators = np.arange(n_perturbations)
    contexts = [f"C{i + 1}" for i in range(n_contexts)]
    n_programs = max(2, n_perturbations // 8)
    targets_per_regulator = max(4, n_genes // 25)

    singles = list(genes[regulators])
    pairs = set()
    while len(pairs) < min(n_combinations, n_perturbations * (n_perturbations - 1) // 2):
        a, b = sorted(rng.choice(n_perturbations, 2, replace=False))
        pairs.add((int(a), int(b)))
    pairs = sorted(pairs)
    combos = [COMBINATION_SEP.join((genes[a], genes[b])) for a, b in pairs]
    interaction = {c: (rng.normal(0, 0.5, n_genes) * (rng.random(n_genes) < 0.05) if rng.random() < 1 / 3
                       else np.zeros(n_genes)) for c in combos}

    mu0 = rng.normal(0, 1.5, n_genes)
    W0 = _regulatory_effects(rng, n_genes, regulators, n_programs, targets_per_regulator)
    strength = dict(zip(genes[regulators], rng.gamma(0.5, 2.0, n_perturbations), strict=True))
    # Keep the steady state (I - W)^-1 well defined: shrink the network if its spectral radius exceeds 0.5.
    radius = np.abs(np.linalg.eigvals(W0)).max()
    scale = 0.5 / radius if radius > 0.5 else 1.0
    perturbations = [CONTROL] + singles + combos
    rows, truth_eta, rewired, networks = [], [], [], []
    positions = np.linspace(0.5, 1.0, n_contexts) if n_contexts > 1 else np.ones(1)
    for c, t in zip(contexts, positions, strict=True):
        W, frac = _context_network(rng, W0, context_divergence * t, n_programs, regulators, targets_per_regulator)
        W *= scale
        networks.append(W)
        rewired.append(frac)
        mu = mu0 + context_shift * t * rng.normal(0, 1, n_genes)
        inverse = np.linalg.inv(np.eye(n_genes) - W)
        for p in perturbations:
            u = np.zeros(n_genes)
            for t in ([] if p == CONTROL else p.split(COMBINATION_SEP)):
                u[np.flatnonzero(genes == t)] -= 2 * effect_size * strength[t]
            eta = mu + inverse @ u + interaction.get(p, 0)
            truth_eta.append(eta)
            rows.append((c, p))

    measured = []
    for i in range(len(contexts)):
        keep = set(perturbations) if i == 0 else {CONTROL} | set(
            rng.choice(perturbations[1:], int(round(coverage * (len(perturbations) - 1))), replace=False)
        )
        measured += [p in keep for p in perturbations]
    measured = np.array(measured)

    truth_eta = np.array(truth_eta)
    prob = np.exp(truth_eta - truth_eta.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    library_sd = 0.3
    counts, obs = [], []
    for (c, p), is_measured, pr in zip(rows, measured, prob, strict=True):
        if not is_measured:
            continue
        n = control_cells if p == CONTROL else cells_per_condition
        size = library_size * np.exp(rng.normal(-library_sd**2 / 2, library_sd, n))
        mean = size[:, None] * pr[None, :]
        lam = rng.gamma(dispersion, 1 / dispersion, mean.shape) * mean
        counts.append(sparse.csr_matrix(rng.poisson(lam).astype(np.float32)))
        obs.append(pd.DataFrame({PERTURBATION_KEY: p, CONTEXT_KEY: c}, index=range(n)))

    obs = pd.concat(obs, ignore_index=True)
    obs.index = [f"cell{i:06d}" for i in range(len(obs))]
    obs[PERTURBATION_KEY] = pd.Categorical(obs[PERTURBATION_KEY], categories=perturbations)
    obs[CONTEXT_KEY] = pd.Categorical(obs[CONTEXT_KEY], categories=contexts)
    X = sparse.vstack(counts).tocsr()
    var = pd.DataFrame({"is_regulator": np.isin(np.arange(n_genes), regulators)}, index=genes)
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.layers[COUNTS] = X.copy()
    normalise(adata)

    truth = _expected_log1p(truth_eta, library_size=library_size, library_sd=library_sd, dispersion=dispersion)
    overlap = np.array([[np.mean(np.all(a[:, regulators] == b[:, regulators], axis=0)) for b in networks]
                        for a in networks])
    adata.uns["vclib"] = {"source": "vclib.loaders.simulate", "found": COUNTS, "values": LOG1P,
                          "perturbation_key": PERTURBATION_KEY, "context_key": CONTEXT_KEY, "control": CONTROL}
    adata.uns["simulation"] = {
        "params": {k: (v if v is not None else "None") for k, v in params.items()},
        "truth": truth.astype(np.float32),
        "truth_conditions": np.array([condition_id(c, p) for c, p in rows]),
        "truth_measured": measured,
        "contexts": np.array(contexts),
        "rewired": np.array(rewired),
        "positions": positions,
        "strength": np.array([strength[g] for g in genes[regulators]]),
        "mechanism_overlap": overlap,
    }
    return adata
