"""Strong simple baselines, scikit-learn style, on pseudobulk.

Every estimator follows scikit-learn's contract: ``__init__`` stores settings; ``fit(train)`` takes a training
pseudobulk (:func:`vclib.splits.training_data`: perturbed conditions and every context's control) and returns
``self``; learned state ends in ``_``; ``predict(conditions)`` returns one pseudobulk row per requested
condition (``"context|perturbation"`` ids), predicted as the target context's control plus a predicted delta.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA

from vclib.schema import CONTEXT_KEY, CONTROL, PERTURBATION_KEY, VclibInputError, condition_id, targets


def _parse(conditions) -> pd.DataFrame:
    if isinstance(conditions, pd.DataFrame):
        frame = conditions[[CONTEXT_KEY, PERTURBATION_KEY]].astype(str).reset_index(drop=True)
    else:
        frame = pd.DataFrame([str(c).split("|", 1) for c in conditions], columns=[CONTEXT_KEY, PERTURBATION_KEY])
    frame.index = [condition_id(c, p) for c, p in zip(frame[CONTEXT_KEY], frame[PERTURBATION_KEY], strict=True)]
    return frame


class PseudobulkBaseline(BaseEstimator):
    """Shared fit/predict: controls per context, training deltas; subclasses predict deltas."""

    def fit(self, train: ad.AnnData) -> PseudobulkBaseline:
        obs = train.obs
        for key in (CONTEXT_KEY, PERTURBATION_KEY):
            if key not in obs:
                raise VclibInputError(f"training pseudobulk needs obs[{key!r}]; got {list(obs.columns)}.")
        X = np.asarray(train.X, dtype=np.float64)
        contexts = obs[CONTEXT_KEY].astype(str).to_numpy()
        perts = obs[PERTURBATION_KEY].astype(str).to_numpy()
        is_control = perts == CONTROL
        self.controls_ = {c: X[i] for i, c in enumerate(contexts) if is_control[i]}
        missing = sorted(set(contexts) - set(self.controls_))
        if missing:
            raise VclibInputError(f"training pseudobulk has no control for context(s) {missing}.")
        self.genes_ = train.var_names.copy()
        self.var_ = train.var.copy()
        self.training_conditions_ = list(train.obs_names)
        self.delta_ = X[~is_control] - np.vstack([self.controls_[c] for c in contexts[~is_control]]) \
            if (~is_control).any() else np.zeros((0, X.shape[1]))
        self.delta_obs_ = pd.DataFrame({CONTEXT_KEY: contexts[~is_control], PERTURBATION_KEY: perts[~is_control]})
        # rows of each perturbation, for _deltas_of (called once per predicted condition)
        self.rows_of_ = pd.Series(np.arange(len(self.delta_obs_))).groupby(perts[~is_control]).indices
        self.mean_delta_ = self.delta_.mean(axis=0) if len(self.delta_) else np.zeros(X.shape[1])
        self.note_ = ""  # what a model has to say about this fit (e.g. it fell back to the training mean)
        self._fit()
        return self

    def _fit(self) -> None:
        """Extra learning for subclasses."""

    def _predict_delta(self, conditions: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def predict(self, conditions) -> ad.AnnData:
        """Predicted pseudobulk for ``conditions`` (ids ``"context|perturbation"`` or a DataFrame)."""
        frame = _parse(conditions)
        unknown = sorted(set(frame[CONTEXT_KEY]) - set(self.controls_))
        if unknown:
            raise VclibInputError(f"no control pseudobulk for context(s) {unknown} in training; the target "
                                  "context's control cells must be visible.")
        delta = self._predict_delta(frame)
        X = np.vstack([self.controls_[c] for c in frame[CONTEXT_KEY]]) + delta
        return ad.AnnData(X=X, obs=frame.copy(), var=self.var_.copy())

    # helpers for subclasses
    def _deltas_of(self, perturbation: str, *, context: str | None = None, exclude_context: str | None = None):
        rows = self.rows_of_.get(perturbation, np.zeros(0, dtype=np.int64))
        contexts = self.delta_obs_[CONTEXT_KEY].to_numpy()[rows]
        keep = np.ones(len(rows), dtype=bool)
        if context is not None:
            keep &= contexts == context
        if exclude_context is not None:
            keep &= contexts != exclude_context
        return self.delta_[rows[keep]], contexts[keep]


class NoChange(PseudobulkBaseline):
    """Predicts that nothing changes: the target context's control.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=6, n_genes=50, cells_per_condition=10)
    >>> pb = vc.pseudobulk.pseudobulk(adata)
    >>> pred = vc.baselines.NoChange().fit(pb).predict(["C1|G0001"])
    >>> bool((pred.X == pb["C1|control"].X).all())
    True
    """

    def _predict_delta(self, conditions):
        return np.zeros((len(conditions), len(self.genes_)))


class TrainingMean(PseudobulkBaseline):
    """Target control plus the mean delta of all training perturbations (all contexts).

    References
    ----------
    Csendes et al., BMC Genomics 2025; Virtual Cell Challenge 2025 mean baselines.
    """

    def _predict_delta(self, conditions):
        return np.tile(self.mean_delta_, (len(conditions), 1))


class ContextMean(PseudobulkBaseline):
    """Target control plus the mean training delta of the target context (the training mean if it has none)."""

    def _fit(self):
        groups = pd.DataFrame(self.delta_).groupby(self.delta_obs_[CONTEXT_KEY].to_numpy())
        self.context_delta_ = {c: g.to_numpy().mean(axis=0) for c, g in groups}

    def _predict_delta(self, conditions):
        return np.vstack([self.context_delta_.get(c, self.mean_delta_) for c in conditions[CONTEXT_KEY]])


class PerturbationMean(PseudobulkBaseline):
    """Target control plus the same perturbation's mean delta in the other (source) contexts.

    Falls back to the training mean where the perturbation was measured in no other training context.
    """

    def _predict_delta(self, conditions):
        out = []
        for c, p in zip(conditions[CONTEXT_KEY], conditions[PERTURBATION_KEY], strict=True):
            deltas, _ = self._deltas_of(p, exclude_context=c)
            out.append(deltas.mean(axis=0) if len(deltas) else self.mean_delta_)
        return np.vstack(out)


class NearestContext(PseudobulkBaseline):
    """The perturbation's delta from the source context whose control pseudobulk is closest to the target's.

    Distances are Euclidean between control pseudobulks (what a lab has before the screen). Falls back to the
    training mean where no other context measured the perturbation.
    """

    def _predict_delta(self, conditions):
        out = []
        for c, p in zip(conditions[CONTEXT_KEY], conditions[PERTURBATION_KEY], strict=True):
            deltas, sources = self._deltas_of(p, exclude_context=c)
            if not len(deltas):
                out.append(self.mean_delta_)
                continue
            dist = [np.linalg.norm(self.controls_[s] - self.controls_[c]) for s in sources]
            out.append(deltas[int(np.argmin(dist))])
        return np.vstack(out)


class Additive(PseudobulkBaseline):
    """For a combination ``A+B``: control + delta_A + delta_B, each single's delta from the same context.

    A single not measured in the target context's training data contributes no change; a non-combination
    perturbation is predicted by its own training delta in that context, or no change.

    References
    ----------
    Norman et al., Science 2019; Ahlmann-Eltze, Huber & Anders, Nat Methods 2025.
    """

    def _predict_delta(self, conditions):
        out = []
        for c, p in zip(conditions[CONTEXT_KEY], conditions[PERTURBATION_KEY], strict=True):
            total = np.zeros(len(self.genes_))
            for t in targets(p):
                deltas, _ = self._deltas_of(t, context=c)
                if len(deltas):
                    total += deltas.mean(axis=0)
            out.append(total)
        return np.vstack(out)


def _embedding_matrix(train_deltas: np.ndarray, d: int, seed: int | None) -> np.ndarray:
    """Gene embedding G: the top ``d`` principal components of the training deltas with genes as rows."""
    d = max(1, min(d, train_deltas.shape[0] - 1, train_deltas.shape[1] - 1))
    return PCA(n_components=d, random_state=seed).fit_transform(train_deltas.T)


def _perturbation_embedding(G: np.ndarray, genes: pd.Index, perturbations) -> np.ndarray:
    """Rows of G for each perturbation's target gene(s), summed for combinations (zero if not measured)."""
    index = {g: i for i, g in enumerate(genes)}
    out = np.zeros((len(perturbations), G.shape[1]))
    for k, p in enumerate(perturbations):
        for t in targets(p):
            if t in index:
                out[k] += G[index[t]]
    return out


class Linear(PseudobulkBaseline):
    """The linear model of Ahlmann-Eltze et al.: ``Y ≈ G K Pᵀ + b``.

    ``Y`` holds the training deltas (genes × perturbations), ``b`` their mean per gene, ``G`` the top ``d``
    principal components of ``Y`` with genes as rows, ``P`` the rows of ``G`` of each perturbation's target gene
    (summed over a combination's targets), and ``K`` the closed-form ridge solution
    ``K = (GᵀG + λI)⁻¹ Gᵀ (Y − b) P (PᵀP + λI)⁻¹``. A new perturbation is predicted as ``G K p + b``; one whose
    target is not a measured gene gets ``b`` (the training mean). Deltas rather than expression make the model
    usable across contexts: each context's control is added back.

    Parameters
    ----------
    d
        Number of principal components (default 10).
    lam
        Ridge penalty λ (default 0.1).
    seed
        Seed of the randomised PCA.

    References
    ----------
    Ahlmann-Eltze, Huber & Anders, "Deep-learning-based gene perturbation effect prediction does not yet
    outperform simple linear baselines", Nat Methods 2025.
    """

    def __init__(self, *, d: int = 10, lam: float = 0.1, seed: int | None = 0):
        self.d = d
        self.lam = lam
        self.seed = seed

    def _fit(self):
        if len(self.delta_) < 2:
            self.G_, self.K_ = np.zeros((len(self.genes_), 1)), np.zeros((1, 1))
            self.note_ = "fewer than 2 training perturbations: the linear model predicts the training mean"
            return
        Y = self.delta_.T - self.mean_delta_[:, None]  # genes × perturbations, centred
        self.G_ = G = _embedding_matrix(self.delta_, self.d, self.seed)
        P = _perturbation_embedding(G, self.genes_, self.delta_obs_[PERTURBATION_KEY])  # perturbations × d
        if not np.any(P):  # a perturbation is embedded by its target gene's row: no measured target, nothing to map
            self.note_ = ("none of the training perturbations' targets are among the genes, so the linear model "
                          "predicts the training mean")
        eye = np.eye(G.shape[1])
        left = np.linalg.solve(G.T @ G + self.lam * eye, G.T @ Y @ P)
        self.K_ = np.linalg.solve((P.T @ P + self.lam * eye).T, left.T).T

    def _predict_delta(self, conditions):
        p = _perturbation_embedding(self.G_, self.genes_, conditions[PERTURBATION_KEY])
        return (self.G_ @ self.K_ @ p.T).T + self.mean_delta_


class KNearestPerturbation(PseudobulkBaseline):
    """Mean delta of the ``k`` training perturbations whose target genes are most similar to the target's.

    Similarity is the cosine between gene embeddings (rows of the training-delta PCA, as in :class:`Linear`):
    genes that move together across perturbations. Neighbours are taken from the target context's training
    perturbations when it has at least ``k``, otherwise from all contexts. Perturbations with no measured target
    gene get the training mean.
    """

    def __init__(self, *, k: int = 5, d: int = 10, seed: int | None = 0):
        self.k = k
        self.d = d
        self.seed = seed

    def _fit(self):
        self.G_ = _embedding_matrix(self.delta_, self.d, self.seed) if len(self.delta_) > 1 else \
            np.zeros((len(self.genes_), 1))
        self.embedding_ = _perturbation_embedding(self.G_, self.genes_, self.delta_obs_[PERTURBATION_KEY])

    def _predict_delta(self, conditions):
        query = _perturbation_embedding(self.G_, self.genes_, conditions[PERTURBATION_KEY])
        norms = np.linalg.norm(self.embedding_, axis=1)
        out = []
        for q, c in zip(query, conditions[CONTEXT_KEY], strict=True):
            if not np.any(q) or not len(self.delta_):
                out.append(self.mean_delta_)
                continue
            pool = (self.delta_obs_[CONTEXT_KEY] == c).to_numpy()
            if pool.sum() < self.k:
                pool = np.ones(len(self.delta_), dtype=bool)
            with np.errstate(invalid="ignore", divide="ignore"):
                sim = np.nan_to_num(self.embedding_ @ q / (norms * np.linalg.norm(q)), nan=-np.inf)
            sim[~pool] = -np.inf
            nearest = np.argsort(-sim, kind="stable")[: self.k]
            out.append(self.delta_[nearest].mean(axis=0))
        return np.vstack(out)


BASELINES = {
    "no_change": NoChange,
    "training_mean": TrainingMean,
    "context_mean": ContextMean,
    "perturbation_mean": PerturbationMean,
    "nearest_context": NearestContext,
    "additive": Additive,
    "linear": Linear,
    "knn_perturbation": KNearestPerturbation,
}
