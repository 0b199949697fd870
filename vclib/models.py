"""Learned models and predictions made elsewhere, with the same fit/predict contract as the baselines.

* :class:`MLP`: a multilayer perceptron (scikit-learn) on perturbation and context embeddings that predicts the
  delta, with a capacity knob (``width``, ``depth``) to test "more capacity" against "more context coverage".
* :class:`ExternalPredictions`: predictions from GEARS, CPA, STATE, scGPT or anything else, read from an h5ad
  per split fold (cell-level or pseudobulk, cell-eval layout accepted) and scored like the built-in models.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPRegressor
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from vclib import pseudobulk as pbk
from vclib.baselines import PseudobulkBaseline, _embedding_matrix, _parse, _perturbation_embedding
from vclib.schema import (
    CONTEXT_KEY,
    CONTROL,
    DEFAULT_CONTEXT,
    PERTURBATION_KEY,
    NotApplicable,
    VclibInputError,
    canonical_label,
)
from vclib.splits._export import MANIFEST, prediction_file


class MLP(PseudobulkBaseline):
    """A multilayer perceptron predicting a condition's delta from what is known without measuring it.

    Inputs per condition: the perturbation's gene embedding (rows of the training-delta PCA of its targets, as
    in :class:`vclib.baselines.Linear`), the context's embedding (principal components of the control
    pseudobulks, known for every context), and the perturbation's mean delta in other training contexts (in
    output space, with an indicator of whether it was measured anywhere else). Output: the delta's scores on
    the top ``n_outputs`` principal components of the training deltas, mapped back to genes.

    Parameters
    ----------
    width
        Units per hidden layer (capacity knob).
    depth
        Number of hidden layers (capacity knob).
    d
        Dimension of the gene embedding.
    n_outputs
        Principal components of the delta that are predicted.
    alpha, max_iter
        L2 penalty and iterations of scikit-learn's ``MLPRegressor``; ``converged_`` records whether the
        optimiser converged within ``max_iter``.
    seed
        Seed of the PCA and of the network's initialisation.

    After ``fit``, ``n_parameters_`` is the network's number of weights and biases (its capacity).
    """

    def __init__(self, *, width: int = 64, depth: int = 2, d: int = 10, n_outputs: int = 30,
                 alpha: float = 1e-3, max_iter: int = 400, seed: int | None = 0):
        self.width = width
        self.depth = depth
        self.d = d
        self.n_outputs = n_outputs
        self.alpha = alpha
        self.max_iter = max_iter
        self.seed = seed

    def _features(self, contexts, perturbations) -> np.ndarray:
        gene = _perturbation_embedding(self.G_, self.genes_, perturbations)
        ctx = np.vstack([self.context_embedding_[c] for c in contexts])
        elsewhere = np.zeros((len(contexts), self.out_pca_.n_components_ + 1))
        seen, means = [], []
        for i, (c, p) in enumerate(zip(contexts, perturbations, strict=True)):
            deltas, _ = self._deltas_of(p, exclude_context=c)
            if len(deltas):
                seen.append(i)
                means.append(deltas.mean(axis=0))
        if seen:  # one transform for all rows (sklearn's per-call checks cost more than the product)
            elsewhere[seen, :-1] = self.out_pca_.transform(np.vstack(means))
            elsewhere[seen, -1] = 1.0
        return np.hstack([gene, ctx, elsewhere])

    def _fit(self):
        if len(self.delta_) < 3:
            raise NotApplicable(f"the MLP needs at least 3 training perturbations; this fold has {len(self.delta_)}")
        self.G_ = _embedding_matrix(self.delta_, self.d, self.seed)
        controls = np.vstack(list(self.controls_.values()))
        n_ctx = max(1, min(4, len(controls) - 1))
        ctx_scores = (PCA(n_components=n_ctx, random_state=self.seed).fit_transform(controls)
                      if len(controls) > 1 else np.zeros((1, 1)))
        self.context_embedding_ = dict(zip(self.controls_, ctx_scores, strict=True))
        n_out = max(1, min(self.n_outputs, len(self.delta_) - 1, len(self.genes_)))
        self.out_pca_ = PCA(n_components=n_out, random_state=self.seed).fit(self.delta_)
        X = self._features(self.delta_obs_[CONTEXT_KEY], self.delta_obs_[PERTURBATION_KEY])
        self.scaler_ = StandardScaler().fit(X)
        self.network_ = MLPRegressor(hidden_layer_sizes=(self.width,) * self.depth, alpha=self.alpha,
                                     max_iter=self.max_iter, random_state=self.seed)
        # The network's matrices have a few hundred rows: BLAS threads gain nothing on them and, on a busy machine,
        # only contend for the cores (a fit measured 14x slower with two threads under load than with one).
        with warnings.catch_warnings(record=True) as caught, threadpool_limits(1, user_api="blas"):
            warnings.simplefilter("always", ConvergenceWarning)
            self.network_.fit(self.scaler_.transform(X), self.out_pca_.transform(self.delta_))
        # Not converging within max_iter is expected on small screens; it is recorded, not printed per fold.
        self.converged_ = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        self.n_parameters_ = int(sum(w.size for w in self.network_.coefs_ + self.network_.intercepts_))

    def _predict_delta(self, conditions):
        X = self._features(conditions[CONTEXT_KEY].to_numpy(), conditions[PERTURBATION_KEY].to_numpy())
        scores = self.network_.predict(self.scaler_.transform(X)).reshape(len(conditions), -1)
        return self.out_pca_.inverse_transform(scores)


class ExternalPredictions(PseudobulkBaseline):
    """Predictions produced elsewhere, read from h5ad files and scored like any built-in model.

    Parameters
    ----------
    source
        Where the predictions are: a folder written by :func:`vclib.splits.export` (the model's answers in its
        ``predictions/``), a path template with ``{split}`` and ``{fold}`` (e.g. ``"gears/{split}_{fold}.h5ad"``),
        a dict ``{(split, fold): path or AnnData}``, or one path / AnnData used for every fold.
    perturbation_key, context_key, control
        Column names and control label of the files (cell-eval's layout: ``"target_gene"``, ``None``,
        ``"non-targeting"``).

    Cell-level files are averaged per condition (and keep their cells for cell-level DE); pseudobulk files are
    used as they are. ``fit`` records the training conditions; ``predict`` checks that every requested condition
    is there, that the genes are the training genes, and that values are finite, naming offenders.
    """

    def __init__(self, source, *, perturbation_key: str = PERTURBATION_KEY, context_key: str | None = CONTEXT_KEY,
                 control: str = CONTROL, split: str | None = None, fold: str | None = None):
        self.source = source
        self.perturbation_key = perturbation_key
        self.context_key = context_key
        self.control = control
        self.split = split
        self.fold = fold

    def select(self, split: str, fold: str) -> ExternalPredictions:
        """The same predictions bound to one split fold (what :func:`vclib.benchmark.run` calls)."""
        return ExternalPredictions(self.source, perturbation_key=self.perturbation_key,
                                   context_key=self.context_key, control=self.control, split=split, fold=fold)

    def _source(self) -> ad.AnnData | Path:
        """This split fold's predictions: an AnnData, or the file to read (from a dict, a path template, one file, or
        a folder written by :func:`vclib.splits.export`)."""
        source = self.source
        if isinstance(source, dict):
            if (self.split, self.fold) not in source:
                raise VclibInputError(f"no external predictions for split {self.split!r} fold {self.fold!r}; "
                                      f"given: {sorted(source)}.")
            source = source[(self.split, self.fold)]
        if isinstance(source, ad.AnnData):
            return source
        if (Path(str(source)) / MANIFEST).is_file():
            return prediction_file(source, self.split, self.fold)
        return self._path(source)

    def _load(self) -> tuple[ad.AnnData, str]:
        source = self._source()
        if isinstance(source, ad.AnnData):
            return source, "AnnData"
        path = source
        if not path.exists():
            raise VclibInputError(f"external predictions {str(path)!r} not found (split {self.split!r}, "
                                  f"fold {self.fold!r}).")
        try:
            return ad.read_h5ad(path), str(path)
        except Exception as err:  # h5py/anndata raise many types for corrupt or truncated files
            raise VclibInputError(f"cannot read external predictions {str(path)!r} as h5ad ({type(err).__name__}: "
                                  f"{err}). Is the file complete? Write it again with adata.write_h5ad.") from err

    def _path(self, template) -> Path:
        """The file of this split fold: ``template`` with ``{split}`` and ``{fold}`` filled in."""
        try:
            return Path(str(template).format(split=self.split, fold=self.fold))
        except (KeyError, IndexError, ValueError) as err:
            raise VclibInputError(f"the predictions path {str(template)!r} has a placeholder other than {{split}} "
                                  f"and {{fold}} ({type(err).__name__}: {err}); write e.g. "
                                  "'preds/{split}_{fold}.h5ad'.") from None

    def content_hash(self) -> str:
        """A hash of the predictions this object reads for its split fold (the file's bytes, or an in-memory
        AnnData's values and labels), so a changed file is never mistaken for the one scored before."""
        try:
            source = self._source()
        except VclibInputError:
            return "missing"
        h = hashlib.sha256()
        if isinstance(source, ad.AnnData):
            X = source.X
            for part in ((X.data, X.indices, X.indptr) if sparse.issparse(X) else (np.asarray(X),)):
                h.update(np.ascontiguousarray(part).tobytes())
            h.update(pd.util.hash_pandas_object(source.obs.astype(str), index=True).to_numpy().tobytes())
            h.update("\n".join(map(str, source.var_names)).encode())
            return h.hexdigest()[:16]
        if not source.exists():
            return "missing"
        with source.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()[:16]

    def predict(self, conditions) -> ad.AnnData:
        """Predicted pseudobulk (or cells) of ``conditions``. Conditions the file declares it does not predict
        (``uns["not_applicable"] = {"conditions": [...], "reason": ...}``, e.g. scGen on a perturbation no training
        context measured) are left out and kept in ``declined_`` with the reason; if none is left,
        :class:`~vclib.schema.NotApplicable` is raised with it."""
        frame = _parse(conditions)
        raw, where = self._load()
        said = raw.uns.get("not_applicable") or {}
        declined = {str(c) for c in said.get("conditions", [])} & set(frame.index)
        self.declined_ = {c: str(said.get("reason", "the model says it does not apply")) for c in declined}
        frame = frame.loc[[c for c in frame.index if c not in declined]]
        if frame.empty:
            raise NotApplicable(f"{where}: no condition of this fold is predicted: "
                                f"{next(iter(self.declined_.values()))}")
        for key in [self.perturbation_key] + ([self.context_key] if self.context_key else []):
            if key not in raw.obs:
                raise VclibInputError(f"{where}: obs has no column {key!r}; columns: {list(raw.obs.columns)}.")
        labels = raw.obs[self.perturbation_key].astype(str)
        obs = pd.DataFrame({
            PERTURBATION_KEY: labels.map({x: canonical_label(x, control=self.control) for x in labels.unique()}),
            CONTEXT_KEY: raw.obs[self.context_key].astype(str) if self.context_key else DEFAULT_CONTEXT,
        }, index=raw.obs_names)
        data = ad.AnnData(X=raw.X, obs=obs, var=pd.DataFrame(index=raw.var_names))
        extra = data.var_names.difference(self.genes_)
        missing_genes = self.genes_.difference(data.var_names)
        if len(extra) or len(missing_genes):
            raise VclibInputError(f"{where}: genes differ from the data: {len(extra)} extra (e.g. "
                                  f"{list(extra[:5])}), {len(missing_genes)} missing (e.g. {list(missing_genes[:5])}).")
        data = data[:, self.genes_].copy()
        pb = pbk.pseudobulk(data)
        missing = [n for n in frame.index if n not in pb.obs_names]
        if missing:
            raise VclibInputError(f"{where}: no prediction for {len(missing)} condition(s): "
                                  f"{', '.join(map(repr, missing[:8]))}.")
        bad = [n for n in frame.index if not np.isfinite(np.asarray(pb[n].X)).all()]
        if bad:
            raise VclibInputError(f"{where}: NaN or inf in the prediction of {', '.join(map(repr, bad[:8]))}.")
        if pb.obs["n_cells"].max() > 1:  # cell-level: keep the cells so DE can run on them
            keep = pd.Series(list(zip(obs[CONTEXT_KEY], obs[PERTURBATION_KEY], strict=True)), index=obs.index)
            wanted = set(zip(frame[CONTEXT_KEY], frame[PERTURBATION_KEY], strict=True))
            return data[keep.map(lambda k: k in wanted).to_numpy()].copy()
        return ad.AnnData(X=np.asarray(pb[list(frame.index)].X), obs=frame.copy(), var=self.var_.copy())


MODELS = {"mlp": MLP}
