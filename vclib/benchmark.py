"""Run a benchmark grid (model × split fold × seed) into one tidy table, resumably.

Each finished (model, split, fold, seed) cell (its scores and its predicted deltas) is written to
``results_dir/cells/`` atomically, under a name that carries a hash of everything its result depends on (vclib
version, model settings and, for external predictions, the content of the prediction file; split table; metric
settings; the content of the observed data and of a supplied observed DE). A re-run with the same inputs reads
finished cells instead of recomputing them, an interrupted run resumes where it stopped, and cells computed from
other inputs are never mixed into the result. Scores are written with round-trip float formatting, so a re-run
from the cache is bit-identical to the first. With a ``distributed.Client`` (``run(..., client=...)``) each cell is
one task on a cluster and these files are the only state the tasks share; :func:`load_predictions` reads the cells
it is asked for, not the whole grid.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.base import clone
from tqdm.auto import tqdm

from vclib import __version__
from vclib import splits as _splits
from vclib.baselines import BASELINES
from vclib.metrics import (
    CEILING,
    DE_METRICS,
    MIN_N,
    REGISTRY,
    Observed,
    aggregate,
    calibrate,
    ceiling,
    check_metrics,
    compare,
    evaluate,
    prepare,
)
from vclib.models import MODELS
from vclib.schema import CONTEXT_KEY, CONTROL, PERTURBATION_KEY, NotApplicable, VclibInputError

DEFAULT_MODELS = ("no_change", "training_mean", "context_mean", "perturbation_mean", "nearest_context",
                  "additive", "linear", "knn_perturbation", "mlp")
DEFAULT_SPLITS = ("unseen_perturbation", "unseen_context")
INDEX_FILE = "run_index.csv"
SPLITS_FILE = "splits.csv"
IDENTICAL_FILE = "identical_models.csv"
SKIPPED_FILE = "skipped.csv"
MANIFEST_FILE = "manifest.json"
SCORED_AGAINST = "scored_against"  # layer of the ceiling's saved predictions: the half it was scored against
SCORE_DTYPES = {"fold": str, "split": str, "context": str, "perturbation": str, "metric": str, "model": str,
                "note": str}


def estimator(name: str, **params):
    """A baseline or model by registry name, with settings.

    Examples
    --------
    >>> import vclib as vc
    >>> vc.benchmark.estimator("linear", d=5)
    Linear(d=5)
    """
    registry = {**BASELINES, **MODELS}
    if name not in registry:
        raise VclibInputError(f"unknown model {name!r}; valid models: {', '.join(registry)}.")
    return registry[name](**params)


def _models(models) -> dict:
    if isinstance(models, dict):
        out = dict(models)
    elif isinstance(models, str):
        raise VclibInputError(f"models= takes a list of names or a dict, not the string {models!r}; write "
                              f"models=[{models!r}].")
    else:
        out = {name: estimator(name) for name in models}
    if not out:
        raise VclibInputError("models= is empty: give at least one model name (e.g. ['training_mean']).")
    if CEILING in out:
        raise VclibInputError(f"{CEILING!r} is the noise ceiling's name (include_ceiling=True adds it); rename "
                              "that model.")
    return out


def fingerprint(adata: ad.AnnData | Observed) -> str:
    """A short hash of the observed data's content: condition labels, genes and every value of ``X``.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> len(vc.benchmark.fingerprint(adata))
    16
    """
    return prepare(adata).fingerprint


def _describe(model) -> dict:
    params = model.get_params() if hasattr(model, "get_params") else {}
    out = {"class": type(model).__name__,
           "params": {k: v if isinstance(v, int | float | str | bool | type(None)) else repr(v)
                      for k, v in params.items()}}
    if hasattr(model, "content_hash"):  # external predictions: the result depends on the file's content
        out["content"] = model.content_hash()
    return out


def _cell_key(settings) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _write_scores(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False, float_format="%.17g")


def read_scores(path: str | Path) -> pd.DataFrame:
    """A scores CSV written by vclib, read back bit for bit (round-trip floats; empty notes stay empty)."""
    table = pd.read_csv(path, dtype=SCORE_DTYPES, float_precision="round_trip", keep_default_na=False,
                        na_values={"value": [""]})
    if "value" in table:
        table["value"] = table["value"].astype(np.float64)
    return table


def _write_atomic(frame: pd.DataFrame, predicted: ad.AnnData, path: Path, settings: dict) -> None:
    """Write a finished cell: settings, then predictions, the scores last, each renamed into place only when
    complete. Temporary names are unique per writer, so two tasks finishing the same cell (a task re-run while a
    worker thought dead still runs it) each rename a whole file into place."""
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    for suffix, write in ((".json", lambda tmp: tmp.write_text(json.dumps(settings, indent=1, sort_keys=True,
                                                                          default=str))),
                          (".h5ad", predicted.write_h5ad),
                          (".csv", lambda tmp: _write_scores(frame, tmp))):
        tmp = path.parent / f"{path.stem}.{token}{suffix}.tmp"
        write(tmp)
        os.replace(tmp, path.with_suffix(suffix))


def _cell(obs: Observed, *, model, name: str, table: pd.DataFrame, split: str, fold, seed: int, path: Path | None,
          settings: dict, metrics, evaluate_options: dict, wants_de: bool) -> tuple[pd.DataFrame, ad.AnnData, str]:
    """One grid cell, read from ``path`` when it is finished there, otherwise scored and written there atomically:
    (scores, predicted deltas, note). A cell is finished when its scores (written last) and predictions exist. The
    serial and the distributed grid both run this, so the files are the only shared state: a task re-run after its
    worker died reads the cell instead of computing it again."""
    if path is not None and path.exists() and path.with_suffix(".h5ad").exists():
        note = json.loads(path.with_suffix(".json").read_text()).get("note", "")
        return read_scores(path), ad.read_h5ad(path.with_suffix(".h5ad")), note
    frame, predicted, note = _score_cell(obs, model, name, table, split, fold, seed, metrics, evaluate_options,
                                         wants_de)
    if path is not None:
        _write_atomic(frame, predicted, path, {**settings, "note": note})
    return frame, predicted, note


def _check_client(client) -> None:
    """Refuse a ``client`` that is not a ``distributed.Client`` (before any work is done)."""
    try:
        import distributed
    except ImportError:
        raise VclibInputError("client= needs dask's distributed scheduler: pip install 'vclib[dask]'.") from None
    if not isinstance(client, distributed.Client):
        raise VclibInputError(f"client= takes a distributed.Client (e.g. Client(LocalCluster()) or your cluster's), "
                              f"got {type(client).__name__}; pass client=None to run the grid here.")


def _on_cluster(client, obs: Observed, cells: list[dict], common: dict, *, cells_dir: Path | None,
                include_ceiling: bool, progress: bool) -> list[tuple]:
    """Every grid cell as one task on ``client``'s cluster; the results in grid order.

    What every cell needs of the observed data (pseudobulk, DE, the ceiling's halves) is computed here once and
    sent to every worker once, so no worker recomputes it. A task lost with its worker is rescheduled by the
    scheduler (up to dask's ``distributed.scheduler.allowed-failures`` times, then ``KilledWorker``); a re-run
    task finds its cell finished in ``cells_dir`` if it was. On an error the remaining tasks are cancelled (the
    finished cells stay in ``cells_dir``) and the error is raised.
    """
    import distributed  # run() checked the client first

    if not obs.not_applicable:
        obs.pseudobulk  # noqa: B018 (computed on first use, then kept and sent with obs)
        if common["wants_de"]:
            obs.de  # noqa: B018
        for seed in sorted({cell["seed"] for cell in cells}) if include_ceiling else ():
            for half in obs.halves(seed):
                if common["wants_de"]:
                    half.de  # noqa: B018
    if cells_dir is not None:
        blind = sorted(str(w) for w, seen in client.run(os.path.isdir, str(cells_dir)).items() if not seen)
        if blind:
            raise VclibInputError(
                f"results_dir {str(cells_dir.parent)!r} is not visible from worker(s) {', '.join(blind)}: with a "
                "client the finished cells are written by the workers, so results_dir must be on a filesystem "
                "every worker mounts at the same path.")
    shared = client.scatter(obs, broadcast=True, hash=False)
    futures = [client.submit(_cell, shared, **cell, **common, pure=False, priority=len(cells) - i,  # grid order
                             key=f"vclib-cell-{cell['name']}-{cell['split']}-{cell['fold']}-seed{cell['seed']}-"
                                 f"{_cell_key({**cell['settings'], 'path': str(cell['path'])})}")
               for i, cell in enumerate(cells)]
    position = {future.key: i for i, future in enumerate(futures)}
    out: list = [None] * len(futures)
    try:
        for future in tqdm(distributed.as_completed(futures), total=len(futures), desc="benchmark",
                           disable=not progress):
            out[position[future.key]] = future.result()
            future.release()
    finally:
        client.cancel([*futures, shared])
    return out


def split_tables(
    data: ad.AnnData | Observed,
    *,
    splits=DEFAULT_SPLITS,
    seeds=(0,),
    split_options: dict | None = None,
) -> pd.DataFrame:
    """The split tables a benchmark uses, one per seed, with a ``seed`` column; splits that cannot apply to the
    data are left out and named with the reason in ``attrs["skipped"]``.

    Parameters
    ----------
    data
        Observed cells (or an :class:`vclib.metrics.Observed`).
    splits
        Split names (:data:`vclib.splits.SPLITS`) or split tables (used for every seed unless they have a
        ``seed`` column).
    seeds
        Seeds of the random splits.
    split_options
        Options per split name, e.g. ``{"unseen_perturbation": {"n_folds": 3}}``.

    Returns
    -------
    The concatenated split tables (:data:`vclib.splits.COLUMNS` + ``seed``); ``attrs["skipped"]``: a list of
    ``{"analysis", "reason"}``; ``attrs["notes"]``: adjustments made (e.g. fewer folds).

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=1, n_perturbations=8, n_genes=50, cells_per_condition=10)
    >>> table = vc.benchmark.split_tables(adata, splits=["unseen_perturbation", "unseen_context"], seeds=[0, 1])
    >>> sorted(table["seed"].unique().tolist()), table.attrs["skipped"][0]["analysis"]
    ([0, 1], 'split unseen_context')
    """
    seeds = _check_seeds(seeds)
    split_options = split_options or {}
    if isinstance(splits, str | pd.DataFrame):
        splits = [splits]
    cells = data.cells if isinstance(data, Observed) else data
    tables, skipped, notes = [], [], []
    names = []
    for s in splits:
        if isinstance(s, pd.DataFrame):
            tables.append(s if "seed" in s else pd.concat([s.assign(seed=seed) for seed in seeds]))
            continue
        if not isinstance(s, str) or s not in _splits.SPLITS:
            raise VclibInputError(f"unknown split {s!r}; valid splits: {', '.join(_splits.SPLITS)}.")
        names.append(s)
    plan = _splits.applicable(cells, names, options=split_options)
    skipped += plan["skipped"]
    notes += plan["notes"]
    for name, options in plan["splits"].items():
        tables += [_splits.make(name, cells, seed=seed, **options).assign(seed=seed) for seed in seeds]
    if not tables:
        out = pd.DataFrame(columns=[*_splits.COLUMNS, "seed"])
    else:
        out = pd.concat(tables, ignore_index=True)
        out["seed"] = out["seed"].astype(int)
        out["fold"] = out["fold"].astype(str)
    out.attrs["skipped"] = skipped
    out.attrs["notes"] = notes
    return out


def _check_seeds(seeds) -> list[int]:
    if isinstance(seeds, int | np.integer):
        seeds = [int(seeds)]
    seeds = list(seeds)
    if not seeds:
        raise VclibInputError("seeds= is empty: give at least one seed, e.g. seeds=[0].")
    bad = [s for s in seeds if not isinstance(s, int | np.integer) or isinstance(s, bool)]
    if bad:
        raise VclibInputError(f"seeds must be integers; got {bad}.")
    if len(set(seeds)) < len(seeds):
        raise VclibInputError(f"seeds {seeds} repeat a seed; each seed is one independent replicate of the grid.")
    return [int(s) for s in seeds]


def run(
    data: ad.AnnData | Observed,
    *,
    splits: list | tuple = DEFAULT_SPLITS,
    models=DEFAULT_MODELS,
    metrics: list[str] | None = None,
    seeds: list[int] | tuple[int, ...] = (0,),
    results_dir: str | Path | None = None,
    split_options: dict | None = None,
    evaluate_options: dict | None = None,
    include_ceiling: bool = True,
    observed_de=None,
    progress: bool = True,
    client=None,
) -> pd.DataFrame:
    """Score every model on every split fold and seed: the tidy table of :func:`vclib.metrics.evaluate`.

    Parameters
    ----------
    data
        Observed cells in the data contract, or an :class:`vclib.metrics.Observed` (prepared once; then its
        pseudobulk, DE and split halves are reused).
    splits
        Split names (:data:`vclib.splits.SPLITS`) or split tables (e.g. :func:`split_tables` output, with a
        ``seed`` column). A split that cannot apply to the data (one context for ``unseen_context``, no doubles
        for ``combinations``) is skipped and named in ``attrs["skipped"]``.
    models
        Model names (baselines and models) or a dict ``{name: estimator}``. Estimators are cloned per cell; a
        ``seed`` setting is replaced by the cell's seed. :class:`vclib.models.ExternalPredictions` are bound to
        each fold with ``select``. A built-in model that cannot be fitted on a fold's data (e.g. the MLP with
        fewer than 3 training perturbations) is skipped there and named.
    metrics
        Metric names (default: all).
    seeds
        Seeds of the splits and models.
    results_dir
        Folder for the finished cells (resume and no double work), the split tables used (``splits.csv``) and
        the run's notes. None: keep nothing on disk. With ``client=``, a folder every worker sees at the same path.
    split_options
        Options per split name, e.g. ``{"unseen_perturbation": {"n_folds": 3}}``.
    evaluate_options
        Passed to :func:`vclib.metrics.evaluate` (e.g. ``{"exclude": None}``).
    include_ceiling
        Also score the noise ceiling (model ``"ceiling"``, :func:`vclib.metrics.ceiling`) on every fold.
    observed_de
        :func:`vclib.metrics.rank_genes` of ``data`` if already computed (otherwise computed once here).
    progress
        Show a progress bar over the grid.
    client
        A ``distributed.Client`` (``pip install "vclib[dask]"``): each (model, split fold, seed) cell becomes one
        task on its cluster, and the results are identical to those of ``client=None`` (the grid run here, one cell
        after another). The observed data and what every cell needs of it (pseudobulk, DE, the ceiling's halves)
        are computed here once and sent to each worker once. The finished cells in ``results_dir`` are the only
        state the tasks share: a cell finished earlier is read, not recomputed, and when a worker dies its
        running cell is redone on another worker while a cell it had finished is read back from its files. Give
        ``results_dir=`` with a client: without it a finished cell whose result was lost with its worker is
        computed again (same result, double work) and an interrupted grid starts over.

    Returns
    -------
    DataFrame with columns ``context``, ``perturbation``, ``metric``, ``value``, ``note``, ``model``, ``split``,
    ``fold``, ``seed``. ``attrs``: ``skipped`` (analyses that could not apply, with reasons), ``identical``
    (models whose predictions coincide on a split, :func:`identical_models`), ``notes`` (what the models said,
    e.g. the linear model finding none of the targets among the genes), ``splits`` (the split tables used) and
    ``fingerprint`` (of the observed data).

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=8, n_genes=60, cells_per_condition=20)
    >>> table = vc.benchmark.run(adata, splits=["unseen_context"], models=["no_change", "linear"],
    ...                          metrics=["mse_delta"], progress=False)
    >>> sorted(table["model"].unique())
    ['ceiling', 'linear', 'no_change']
    """
    if client is not None:
        _check_client(client)
    models = _models(models)
    metrics = check_metrics(metrics) if metrics is not None else None
    evaluate_options = dict(evaluate_options or {})
    for key in ("conditions", "model", "split", "observed_de", "metrics"):
        if key in evaluate_options:
            raise VclibInputError(f"evaluate_options may not set {key!r}: run() sets it per cell.")
    de_settings = {k: evaluate_options.pop(k) for k in ("epsilon", "de_options") if k in evaluate_options}
    if isinstance(data, Observed) and observed_de is not None:
        raise VclibInputError("pass observed_de= with an AnnData, not with a prepared Observed (it holds its DE).")
    obs = prepare(data, de=observed_de, **de_settings)
    wants_de = metrics is None or any(m in DE_METRICS for m in metrics)
    tables = split_tables(obs, splits=splits, seeds=seeds, split_options=split_options)
    skipped, notes = list(tables.attrs["skipped"]), list(tables.attrs["notes"])
    if results_dir is not None:
        results_dir = Path(results_dir)
        _claim(results_dir, {"vclib_version": __version__, "fingerprint": None if tables.empty else obs.fingerprint,
                             "seeds": sorted(set(tables["seed"])), "metrics": metrics, "evaluate": evaluate_options})
    if tables.empty:  # nothing applies to this data: an empty table that says why, not an exception
        scores = pd.DataFrame(columns=["context", "perturbation", "metric", "value", "note", "model", "split",
                                       "fold", "seed"])
        scores.attrs.update(skipped=skipped, notes=notes, splits=tables, fingerprint=None,
                            identical=identical_models({}, scores))
        if results_dir is not None:
            pd.DataFrame(columns=["model", "split", "fold", "seed", "scores", "predictions", "data"]).to_csv(
                results_dir / INDEX_FILE, index=False)  # an empty run that later steps can read
            tables.to_csv(results_dir / SPLITS_FILE, index=False)
            _write_notes(results_dir, skipped, notes)
        return scores
    data_hash = obs.fingerprint
    de_hash = _de_hash(observed_de) if observed_de is not None else None
    cells_dir = Path(results_dir).absolute() / "cells" if results_dir is not None else None  # as workers see it
    if cells_dir is not None:
        cells_dir.mkdir(parents=True, exist_ok=True)

    grid = []
    for seed, by_seed in tables.groupby("seed", sort=True):
        for split, fold in _splits.folds(by_seed):
            fold_table = by_seed[(by_seed["split"] == split) & (by_seed["fold"] == fold)]
            names = ([CEILING] if include_ceiling else []) + list(models)
            grid += [(name, fold_table, split, fold, int(seed)) for name in names]

    cells = []
    for name, table, split, fold, seed in grid:
        model = None if name == CEILING else _bind(models[name], split, fold)
        settings = {"vclib_version": __version__, "data": data_hash, "observed_de": de_hash, "model": name,
                    "estimator": _describe(model) if model is not None else "noise ceiling (both halves saved)",
                    "split": split, "fold": fold, "seed": seed, "metrics": metrics,
                    "evaluate": {**evaluate_options, **de_settings},
                    "split_table": _cell_key(table.drop(columns="seed").to_dict("list"))}
        path = None
        if cells_dir is not None:
            safe = _splits.safe_name(f"{name}__{split}__{fold}__seed{seed}")
            path = cells_dir / f"{safe}__{_cell_key(settings)}.csv"
        cells.append({"model": model, "name": name, "table": table, "split": split, "fold": fold, "seed": seed,
                      "path": path, "settings": settings})
    common = {"metrics": metrics, "evaluate_options": evaluate_options, "wants_de": wants_de}
    if client is None:
        done = (_cell(obs, **cell, **common) for cell in cells)
        done = tqdm(done, total=len(cells), desc="benchmark", disable=not progress)
    else:
        done = _on_cluster(client, obs, cells, common, cells_dir=cells_dir, include_ceiling=include_ceiling,
                           progress=progress)

    results, index, predictions, said = [], [], {}, []
    for cell, (frame, predicted, note) in zip(cells, done, strict=True):
        name, split, fold, seed, path = (cell[k] for k in ("name", "split", "fold", "seed", "path"))
        if note:
            said.append((frame.empty, name, split, str(fold), seed, note))
        if path is not None:
            index.append({"model": name, "split": split, "fold": str(fold), "seed": seed, "scores": path.name,
                          "predictions": path.with_suffix(".h5ad").name, "data": data_hash})
        predictions[(name, split, str(fold), seed)] = predicted
        results.append(frame)
    scores = pd.concat(results, ignore_index=True)
    for is_skip, entry in _per_split(said, tables):
        (skipped if is_skip else notes).append(entry)
    identical = identical_models(predictions, scores, data=obs)
    if cells_dir is not None:
        pd.DataFrame(index).to_csv(results_dir / INDEX_FILE, index=False)
        tables.to_csv(results_dir / SPLITS_FILE, index=False)
        identical.to_csv(results_dir / IDENTICAL_FILE, index=False)
        _write_notes(results_dir, skipped, notes)
    scores.attrs.update(skipped=skipped, notes=notes, identical=identical, splits=tables, fingerprint=data_hash)
    return scores


def _claim(results_dir: Path, manifest: dict) -> None:
    """Make ``results_dir`` this benchmark's folder by writing its manifest first. A folder that holds files with
    the names run() writes but no vclib manifest is someone else's: refused, since vclib never replaces a file it
    did not create."""
    own = results_dir / MANIFEST_FILE
    try:
        ours = "vclib_version" in json.loads(own.read_text())
    except (OSError, ValueError, TypeError):
        ours = False
    if not ours:
        clash = [f for f in (MANIFEST_FILE, INDEX_FILE, SPLITS_FILE, IDENTICAL_FILE, SKIPPED_FILE)
                 if (results_dir / f).exists()]
        if clash:
            raise VclibInputError(
                f"results_dir {str(results_dir)!r} holds {', '.join(clash)}, not written by vclib.benchmark.run (no "
                f"vclib {MANIFEST_FILE}); vclib never replaces files it did not create. Pass another results_dir= "
                "(a new or empty folder).")
    results_dir.mkdir(parents=True, exist_ok=True)
    own.write_text(json.dumps(manifest, indent=1, default=str))


def _per_split(said: list[tuple], tables: pd.DataFrame) -> list[tuple[bool, dict]]:
    """What the models said on each fold, one entry per (model, split, message): "every fold" when it held on
    all of them, otherwise the folds named."""
    out = []
    frame = pd.DataFrame(said, columns=["skip", "model", "split", "fold", "seed", "note"])
    for (skip, model, split, note), group in frame.groupby(["skip", "model", "split", "note"], sort=False):
        every = tables.loc[tables["split"] == split, ["fold", "seed"]].astype(str).drop_duplicates()
        where = ("every fold" if len(group) == len(every) else
                 "fold" + ("s " if group["fold"].nunique() > 1 else " ") + ", ".join(dict.fromkeys(group["fold"])))
        seeds = sorted(set(group["seed"]))
        seeds_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
        out.append((bool(skip), {"analysis": f"{model} on {split} ({where}, {seeds_text})", "reason": note}))
    return out


def _write_notes(results_dir: Path, skipped: list, notes: list) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(skipped + notes, columns=["analysis", "reason"]).assign(
        kind=["skipped"] * len(skipped) + ["note"] * len(notes)).to_csv(results_dir / SKIPPED_FILE, index=False)


def _bind(model, split: str, fold: str):
    return model.select(split, fold) if hasattr(model, "select") else clone(model)


def _de_hash(de) -> str:
    h = hashlib.sha256()
    h.update("\n".join(map(str, de.conditions.index)).encode())
    h.update("\n".join(map(str, de.genes)).encode())
    for array in (de.lfc, de.pvalue, de.fdr):
        h.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def _predicted_deltas(predicted: ad.AnnData, controls: ad.AnnData, test: list[str]) -> ad.AnnData:
    """Prediction minus the control of its context, for the test conditions, as float32."""
    from vclib import pseudobulk as pbk

    if predicted.obs.groupby([CONTEXT_KEY, PERTURBATION_KEY], observed=True).size().max() > 1:
        predicted = pbk.pseudobulk(predicted)
    rows = predicted[test]
    ctrl = np.asarray(controls[[f"{c}|{CONTROL}" for c in rows.obs[CONTEXT_KEY].astype(str)]].X)
    obs = rows.obs[[CONTEXT_KEY, PERTURBATION_KEY]].astype(str)
    return ad.AnnData(X=(np.asarray(rows.X, dtype=np.float64) - ctrl).astype(np.float32), obs=obs,
                      var=pd.DataFrame(index=rows.var_names.copy()))


def _empty_cell(genes: pd.Index) -> tuple[pd.DataFrame, ad.AnnData]:
    frame = pd.DataFrame(columns=["context", "perturbation", "metric", "value", "note"])
    predicted = ad.AnnData(X=np.zeros((0, len(genes)), dtype=np.float32),
                           obs=pd.DataFrame(columns=[CONTEXT_KEY, PERTURBATION_KEY]),
                           var=pd.DataFrame(index=genes.copy()))
    return frame, predicted


def _score_cell(obs: Observed, model, name, table, split, fold, seed, metrics, evaluate_options, wants_de):
    """One grid cell: (scores, predicted deltas, a note: why it was skipped or what the model said)."""
    test = _splits.roles(table, split, fold).get("test", [])
    note = ""
    if name == CEILING:
        first, second = obs.halves(seed)
        have = set(first.pseudobulk.obs_names) & set(second.pseudobulk.obs_names)
        splittable = [c for c in test if c in have and f"{c.split('|', 1)[0]}|{CONTROL}" in have]
        if len(splittable) < len(test):
            note = (f"{len(test) - len(splittable)} of {len(test)} test conditions have too few cells to split "
                    "in halves (2 per condition and 2 control cells per context): no ceiling for them")
        if not splittable:
            frame, predicted = _empty_cell(obs.var_names)
            return frame, predicted, note
        frame = ceiling(obs, seed=seed, conditions=splittable, metrics=metrics, **evaluate_options)
        predicted = _predicted_deltas(first.pseudobulk, first.pseudobulk, splittable)
        # what the ceiling was scored against: the other half, not the whole data (which holds the first half's
        # cells, so a plot of half against whole would show their shared noise as agreement)
        predicted.layers[SCORED_AGAINST] = _predicted_deltas(second.pseudobulk, second.pseudobulk, splittable).X
    else:
        train = _splits.training_data(obs.pseudobulk, table, split, fold)
        if "seed" in model.get_params():
            model.set_params(seed=seed)
        try:
            model.fit(train)
        except NotApplicable as err:
            frame, predicted = _empty_cell(obs.var_names)
            return frame, predicted, str(err)
        _splits.check_leakage(model.training_conditions_, table, split, fold)
        try:
            prediction = model.predict(test)
        except NotApplicable as err:
            frame, predicted = _empty_cell(obs.var_names)
            return frame, predicted, str(err)
        note = getattr(model, "note_", "")
        declined = getattr(model, "declined_", {})  # conditions the model says it cannot predict, with why
        if declined:
            test = [c for c in test if c not in declined]
            note = "; ".join(filter(None, [note, f"{len(declined)} test condition(s) not predicted: "
                                                  f"{next(iter(declined.values()))}"]))
        frame = evaluate(prediction, obs, conditions=test, metrics=metrics, model=name, epsilon=obs.epsilon,
                         de_options=obs.de_options, **evaluate_options)
        predicted = _predicted_deltas(prediction, obs.pseudobulk, test)
    frame["model"] = name
    frame["split"] = split
    frame["fold"] = str(fold)
    frame["seed"] = seed
    return frame, predicted, note


def identical_models(predictions: dict, scores: pd.DataFrame, *, data: Observed | None = None,
                     atol: float = 1e-6) -> pd.DataFrame:
    """Models whose predictions coincide on every test condition of a split (within ``atol``), with the reason
    when the data explains it.

    Parameters
    ----------
    predictions
        ``{(model, split, fold, seed): predicted deltas}`` (what :func:`run` keeps per cell).
    scores
        The :func:`run` scores (for the model order).
    data
        The observed data, to name the reason (e.g. one perturbation per context).
    atol
        Largest absolute difference counted as equal.

    Returns
    -------
    One row per (split, group of identical models): ``split``, ``models`` (``"a = b = c"``), ``n_models``,
    ``reason``.
    """
    rows = []
    cells = pd.DataFrame([{"model": m, "split": s, "fold": f, "seed": k} for m, s, f, k in predictions])
    if cells.empty:
        return pd.DataFrame(columns=["split", "models", "n_models", "reason"])
    one_each = data is not None and (data.pseudobulk.obs.loc[~data.pseudobulk.obs["is_control"]]
                                     .groupby(CONTEXT_KEY, observed=True).size().max() == 1)
    for split, group in cells[cells["model"] != CEILING].groupby("split", sort=True):
        order = [m for m in dict.fromkeys(scores["model"]) if m in set(group["model"])]
        folds = group[["fold", "seed"]].drop_duplicates().itertuples(index=False, name=None)
        folds = list(folds)
        classes: list[list[str]] = []
        for model in order:
            for members in classes:
                if all(_same(predictions.get((model, split, f, k)), predictions.get((members[0], split, f, k)), atol)
                       for f, k in folds):
                    members.append(model)
                    break
            else:
                classes.append([model])
        for members in classes:
            if len(members) > 1:
                reason = "one perturbation per context" if one_each else \
                    "identical predictions on every test condition of this split"
                rows.append({"split": split, "models": " = ".join(members), "n_models": len(members),
                             "reason": reason})
    return pd.DataFrame(rows, columns=["split", "models", "n_models", "reason"])


def _same(a: ad.AnnData | None, b: ad.AnnData | None, atol: float) -> bool:
    if a is None or b is None or a.shape != b.shape or not a.obs_names.equals(b.obs_names):
        return a is None and b is None
    return bool(np.allclose(np.asarray(a.X), np.asarray(b.X), rtol=0, atol=atol))


def merge_identical(table: pd.DataFrame, identical: pd.DataFrame) -> pd.DataFrame:
    """A summary or comparison table with each group of identical models shown once, named ``"a = b = c"``.

    Parameters
    ----------
    table
        A table with ``model`` and ``split`` columns (e.g. :func:`vclib.metrics.aggregate` output).
    identical
        :func:`identical_models` output (``attrs["identical"]`` of :func:`run`).
    """
    if identical is None or identical.empty or "split" not in table:
        return table
    out = table.copy()
    drop = np.zeros(len(out), dtype=bool)
    for row in identical.itertuples(index=False):
        members = row.models.split(" = ")
        in_split = (out["split"] == row.split).to_numpy()
        first = in_split & (out["model"] == members[0]).to_numpy()
        out.loc[first, "model"] = row.models
        drop |= in_split & out["model"].isin(members[1:]).to_numpy()
    return out[~drop].reset_index(drop=True)


def load_predictions(
    results_dir: str | Path,
    *,
    model: str | list[str] | None = None,
    split: str | list[str] | None = None,
    fold: str | list[str] | None = None,
    seed: int | list[int] | None = None,
) -> ad.AnnData:
    """The predicted deltas of the last :func:`run` into ``results_dir``, one row per (cell of the grid,
    condition), with obs ``model``, ``split``, ``fold``, ``seed``, ``context``, ``perturbation``; optionally only
    the cells of some models, splits, folds or seeds, read on demand.

    Predicted deltas are the prediction minus the control it was built on (the ceiling's: one half of the
    observed cells minus that half's control). Notebook 03 reads them instead of re-running the benchmark.
    ``uns["scored_against"]`` holds, for the ceiling's rows, the delta of the other half it was scored against
    (rows named as the predictions; see :func:`vclib.failures.scored_against`).

    Parameters
    ----------
    results_dir
        The ``results_dir`` of :func:`run`.
    model, split, fold, seed
        Keep only the grid cells with this value (or one of these values); None: every value. Each grid cell is
        one file, and only the files of the cells kept are read, so one model's predictions of a large grid cost
        that model's files only.

    Returns
    -------
    AnnData of predicted deltas (float32), rows named ``model|split|fold|seed|context|perturbation``; the rows of
    the chosen cells equal the same rows of the unfiltered result. Empty (no rows, no genes) when no split
    applied to the data; a filter that matches no cell of the run is an error naming the values the run has.

    Examples
    --------
    >>> import tempfile
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=8, n_genes=60, cells_per_condition=20)
    >>> folder = tempfile.mkdtemp()
    >>> _ = vc.benchmark.run(adata, splits=["unseen_context"], models=["no_change", "linear"],
    ...                      metrics=["mse_delta"], results_dir=folder, progress=False)
    >>> linear = vc.benchmark.load_predictions(folder, model="linear")
    >>> sorted(linear.obs["model"].unique()), sorted(linear.obs["fold"].unique())
    (['linear'], ['C1', 'C2'])
    """
    results_dir = Path(results_dir)
    if not (results_dir / INDEX_FILE).exists():
        raise VclibInputError(f"{str(results_dir)!r} holds no benchmark run ({INDEX_FILE} missing); run "
                              "vc.benchmark.run(..., results_dir=...) or notebook 02 first.")
    index = pd.read_csv(results_dir / INDEX_FILE, dtype={"fold": str, "split": str, "model": str})
    wanted = {"model": model, "split": split, "fold": fold, "seed": seed}
    keep = np.ones(len(index), dtype=bool)
    for key, values in wanted.items():
        if values is None:
            continue
        values = [values] if isinstance(values, str | int | np.integer) else list(values)
        values = [int(v) for v in values] if key == "seed" else [str(v) for v in values]
        present = list(dict.fromkeys(index[key]))
        unknown = [v for v in values if v not in set(present)]
        if unknown and len(index):
            raise VclibInputError(f"the run in {str(results_dir)!r} has no {key} {', '.join(map(repr, unknown))}; "
                                  f"its {key}s: {', '.join(map(str, present))}.")
        keep &= index[key].isin(values).to_numpy()
    if len(index) and not keep.any():
        asked = ", ".join(f"{k}={v!r}" for k, v in wanted.items() if v is not None)
        cells = index[["model", "split", "fold", "seed"]].drop_duplicates(subset=["split", "fold", "seed"])
        raise VclibInputError(f"no cell of the run in {str(results_dir)!r} has {asked}; its (split, fold, seed): "
                              + ", ".join(f"({r.split}, {r.fold}, {r.seed})" for r in cells.itertuples()) + ".")
    index = index[keep]
    parts, against = [], []
    for row in index.itertuples(index=False):
        part = ad.read_h5ad(results_dir / "cells" / row.predictions)
        if part.n_obs == 0:
            continue
        part.obs = part.obs.astype({CONTEXT_KEY: str, PERTURBATION_KEY: str})  # whichever cells are read together
        for key in ("model", "split", "fold", "seed"):
            part.obs[key] = getattr(row, key)
        part.obs_names = [f"{row.model}|{row.split}|{row.fold}|{row.seed}|{n}" for n in part.obs_names]
        if SCORED_AGAINST in part.layers:
            against.append(pd.DataFrame(np.asarray(part.layers[SCORED_AGAINST]), index=part.obs_names,
                                        columns=part.var_names))
            del part.layers[SCORED_AGAINST]
        parts.append(part)
    if not parts:  # nothing was scored (no split applied to the data)
        return ad.AnnData(np.zeros((0, 0), dtype=np.float32),
                          obs=pd.DataFrame(columns=["model", "split", "fold", "seed", CONTEXT_KEY, PERTURBATION_KEY],
                                           index=pd.Index([], dtype=str)))
    out = ad.concat(parts, merge="same")
    if against:
        out.uns[SCORED_AGAINST] = pd.concat(against)
    return out


BEST_COLUMNS = ["split", "metric", "best_model", "best_mean", "n", "best_baseline", "baseline_mean", "ceiling",
                "beats_best_baseline", "difference", "ci_low", "ci_high", "calibrated", "calibration_note", "note",
                "best_learned", "learned_mean", "learned_vs_baseline", "learned_calibrated",
                "learned_calibration_note"]


def best_models(
    scores: pd.DataFrame,
    *,
    metrics: list[str] | None = None,
    baselines: list[str] | None = None,
    identical: pd.DataFrame | None = None,
    n_boot: int = 1000,
    seed: int | None = 0,
    min_n: int = MIN_N,
) -> pd.DataFrame:
    """Who wins where: per split and metric, the best model, the best baseline, and whether the first beats the
    second beyond the noise, with the calibrated score ``(u − b) / (c − b)`` against that best baseline where the
    ceiling is clearly above it. Models with more than 10% undefined values on a metric are not ranked on it.

    Parameters
    ----------
    scores
        :func:`run` output (with the ``ceiling`` rows for calibration).
    metrics
        Metrics to report (default all in ``scores``).
    baselines
        Model names that count as baselines (default: the names of :data:`vclib.baselines.BASELINES`).
    identical
        :func:`identical_models` output (default ``scores.attrs["identical"]``): identical models are named
        together (``"training_mean = context_mean"``).
    n_boot, seed, min_n
        Bootstrap resamples, seed and fewest perturbations of a verdict (:func:`vclib.metrics.compare`).

    Returns
    -------
    One row per (split, metric): ``best_model``, ``best_mean``, ``n``, ``best_baseline``, ``baseline_mean``,
    ``ceiling``, ``beats_best_baseline`` (``yes`` / ``tie`` / ``no`` / ``too few conditions (n = …)``, or ``a
    baseline is best``) with the paired ``difference`` and its CI, ``calibrated`` and ``calibration_note``; and
    for the best learned (non-baseline) model, wherever it ranks: ``best_learned``, ``learned_mean``,
    ``learned_vs_baseline`` and ``learned_calibrated``. ``note`` says when a metric is undefined for every model.
    """
    baselines = list(BASELINES) if baselines is None else list(baselines)
    identical = scores.attrs.get("identical") if identical is None else identical
    summary = aggregate(scores, n_boot=n_boot, seed=seed)
    rows = []
    for (split, metric), group in summary[summary["model"] != CEILING].groupby(["split", "metric"], sort=True):
        if metrics is not None and metric not in metrics:
            continue
        # a model scored on only some conditions (e.g. the additive baseline's correlations, undefined for
        # singles) cannot be ranked by a mean over a different set: it needs 90% of its conditions defined
        ranked = group[(group["n"] > 0) & (group["n"] >= 0.9 * (group["n"] + group["n_nan"]))].dropna(
            subset=["mean"])
        base = ranked[ranked["model"].isin(baselines)]
        if ranked.empty or base.empty:
            rows.append({"split": split, "metric": metric, "note": f"not applicable here: {group['note'].iloc[0]}"
                         if group["n"].max() == 0 else "no baseline is defined on 90% of the conditions"})
            continue
        pick = (lambda g: g.loc[g["mean"].idxmax()]) if REGISTRY[metric].higher_is_better else \
            (lambda g: g.loc[g["mean"].idxmin()])
        best, best_base = pick(ranked), pick(base)
        part = scores[(scores["split"] == split) & (scores["metric"] == metric)]
        calibration = None
        if CEILING in set(part["model"]):
            calibration = calibrate(part, baseline=best_base["model"], n_boot=n_boot, seed=seed, min_n=min_n)
            calibration = calibration.set_index("model")
        ceiling_rows = summary[(summary["model"] == CEILING) & (summary["split"] == split)
                               & (summary["metric"] == metric)]
        c = ceiling_rows["mean"].iloc[0] if len(ceiling_rows) else np.nan

        def calibrated(model: str, calibration=calibration) -> tuple[float, str]:
            if calibration is None or model not in calibration.index:
                return np.nan, "no ceiling" if calibration is None else ""
            return calibration.at[model, "calibrated"], calibration.at[model, "calibration_note"]

        row = {"split": split, "metric": metric, "best_model": _named(best["model"], split, identical),
               "best_mean": best["mean"], "n": int(best["n"]),
               "best_baseline": _named(best_base["model"], split, identical), "baseline_mean": best_base["mean"],
               "ceiling": c, "beats_best_baseline": "a baseline is best", "difference": 0.0, "ci_low": np.nan,
               "ci_high": np.nan, "calibrated": np.nan, "calibration_note": "", "note": ""}
        if best["model"] != best_base["model"]:
            row["calibrated"], row["calibration_note"] = calibrated(best["model"])
        learned = ranked[~ranked["model"].isin(baselines)]
        if len(learned):  # the best learned model, however it ranks, against the best baseline
            model = pick(learned)
            pair = part[part["model"].isin([model["model"], best_base["model"]])]
            diff = compare(pair, baseline=best_base["model"], n_boot=n_boot, seed=seed, min_n=min_n).iloc[0]
            learned_cal, learned_note = calibrated(model["model"])
            row.update(best_learned=_named(model["model"], split, identical), learned_mean=model["mean"],
                       learned_vs_baseline=diff["better"], learned_calibrated=learned_cal,
                       learned_calibration_note=learned_note)
            if model["model"] == best["model"]:
                row.update(beats_best_baseline=diff["better"], difference=diff["difference"],
                           ci_low=diff["ci_low"], ci_high=diff["ci_high"])
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else BEST_COLUMNS)


def _named(model: str, split: str, identical: pd.DataFrame | None) -> str:
    """A model's name, or its group of identical models on this split (``"a = b"``)."""
    if identical is None or identical.empty:
        return model
    for row in identical[identical["split"] == split].itertuples(index=False):
        if model in row.models.split(" = "):
            return row.models
    return model
