"""The fold protocol: each split fold written as files, for a model that runs in its own environment.

A published model pins its own stack (scGen needs anndata 0.9, vclib 0.10 or newer), so it never imports vclib:
vclib writes every fold as plain files, the model writes one predictions file per fold, and
:class:`vclib.models.ExternalPredictions` scores those like any built-in model. The layout:

``manifest.json``
    vclib version, the data's fingerprint, the split names, folds and seed, the keys, and this layout.
``<split>_<fold>/train.h5ad``
    The fold's training cells in the data contract: the cells of its training conditions and the control cells of
    every context (the held-out context's too: a lab has its own unperturbed cells). ``X`` holds log1p values;
    ``layers["counts"]`` the raw counts where the data had them. No cell of a test condition is in it.
``<split>_<fold>/test.csv``
    The conditions to predict: ``context``, ``perturbation``, ``n_cells`` (observed cells, e.g. how many cells a
    cell-level model should generate) and, for combinations, ``n_seen_singles``.
``predictions/<split>_<fold>.h5ad`` (named as the fold's folder)
    Written by the model: one row per predicted cell or one pseudobulk row per test condition, obs ``context`` and
    ``perturbation``, the training genes as columns, log1p values.

``vc.models.ExternalPredictions(folder)`` reads the answers of an exported folder.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from vclib import __version__
from vclib.schema import CONTEXT_KEY, CONTROL, PERTURBATION_KEY, NotApplicable, VclibInputError, condition_id
from vclib.splits._tables import COLUMNS, folds, roles, safe_name

MANIFEST = "manifest.json"
PREDICTIONS = "predictions"


def _one_seed(splits: pd.DataFrame) -> int | None:
    if "seed" not in splits or splits.empty:
        return None
    seeds = sorted(splits["seed"].unique())
    if len(seeds) > 1:
        raise VclibInputError(f"the split table holds {len(seeds)} seeds ({seeds}); a fold's files are named by split "
                              "and fold only, so export one seed per folder: export(adata, splits[splits['seed'] == "
                              "s], folder / f'seed{s}') for each seed s.")
    return int(seeds[0])


def export(adata: ad.AnnData, splits: pd.DataFrame, folder: str | Path) -> Path:
    """Write every fold of ``splits`` as files a model in another environment can train and predict from.

    Parameters
    ----------
    adata
        Observed cells in the data contract (:func:`vclib.loaders.read`).
    splits
        A split table (:mod:`vclib.splits`), or :func:`vclib.benchmark.split_tables`' output for one seed.
    folder
        A new (or empty) folder; an existing non-empty folder is refused, nothing is overwritten.

    Returns
    -------
    The folder, holding ``manifest.json``, ``<split>_<fold>/train.h5ad`` and ``test.csv`` per fold and an empty
    ``predictions/`` for the model's answers (the module docstring gives the layout). Score the answers with
    ``vc.models.ExternalPredictions(folder)``.

    Examples
    --------
    >>> import tempfile, vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=4, n_genes=30, cells_per_condition=5)
    >>> folder = vc.splits.export(adata, vc.splits.unseen_context(adata), tempfile.mkdtemp() + "/folds")
    >>> sorted(p.name for p in folder.iterdir())
    ['manifest.json', 'predictions', 'unseen_context_C1', 'unseen_context_C2']
    """
    from vclib.metrics import prepare  # prepare validates the contract and fingerprints the data

    missing = [c for c in COLUMNS if c not in splits.columns]
    if missing:
        raise VclibInputError(f"splits is not a split table: columns {missing} missing (make one with "
                              "vc.splits.make or vc.benchmark.split_tables).")
    seed = _one_seed(splits)
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise VclibInputError(f"{str(folder)!r} is not empty; export writes into a new or empty folder and never "
                              "overwrites. Choose another folder.")
    observed = prepare(adata)  # validated; the files hold the caller's cells as they are (layers included)
    cells = adata
    ids = pd.Series([condition_id(c, p) for c, p in zip(cells.obs[CONTEXT_KEY], cells.obs[PERTURBATION_KEY],
                                                         strict=True)], index=cells.obs_names)
    is_control = (cells.obs[PERTURBATION_KEY] == CONTROL).to_numpy()
    unknown = sorted(set(c for split, fold in folds(splits) for c in roles(splits, split, fold).get("test", []))
                     - set(ids))
    if unknown:
        raise VclibInputError(f"{len(unknown)} test condition(s) of the split table are not in the data (e.g. "
                              f"{unknown[:5]}); was the table made from other data?")
    written = []
    for split, fold in folds(splits):
        by_role = roles(splits, split, fold)
        name = f"{safe_name(split)}_{safe_name(fold)}"
        (folder / name).mkdir(parents=True)
        train = is_control | ids.isin(by_role.get("train", [])).to_numpy()
        _portable(cells[train]).write_h5ad(folder / name / "train.h5ad")
        rows = splits[(splits["split"] == split) & (splits["fold"] == fold) & (splits["role"] == "test")]
        test = rows[[CONTEXT_KEY, PERTURBATION_KEY, "n_seen_singles"]].reset_index(drop=True)
        test.insert(2, "n_cells", ids.value_counts().reindex([condition_id(c, p) for c, p in zip(
            test[CONTEXT_KEY], test[PERTURBATION_KEY], strict=True)]).fillna(0).astype(int).to_numpy())
        if test["n_seen_singles"].isna().all():
            test = test.drop(columns="n_seen_singles")
        test.to_csv(folder / name / "test.csv", index=False)
        written.append({"split": split, "fold": fold, "folder": name, "train_cells": int(train.sum()),
                        "test_conditions": len(test)})
    (folder / PREDICTIONS).mkdir(parents=True, exist_ok=True)
    manifest = {
        "vclib_version": __version__, "created": datetime.now().isoformat(timespec="seconds"),
        "data_fingerprint": observed.fingerprint, "genes": int(cells.n_vars),
        "seed": seed, "splits": sorted(splits["split"].unique().tolist()), "folds": written,
        "keys": {"perturbation": PERTURBATION_KEY, "context": CONTEXT_KEY, "control": CONTROL},
        "layout": {"train": "<split>_<fold>/train.h5ad", "test": "<split>_<fold>/test.csv",
                   "predictions": f"{PREDICTIONS}/<split>_<fold>.h5ad"},
        "counts_layer": "counts" in cells.layers,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_plain))
    return folder


def _plain(value):
    return value.item() if isinstance(value, np.generic) else str(value)


def _portable(cells: ad.AnnData) -> ad.AnnData:
    """The cells as a model's older anndata reads them (scGen pins anndata 0.9): ``X``, the counts layer, obs
    with text as plain strings, var names; no ``uns`` (the manifest carries what matters), which newer anndata
    writes in encodings older ones cannot read (e.g. ``uns["log1p"]["base"] = None``)."""
    obs = cells.obs.copy()
    for column in obs.columns:
        if not pd.api.types.is_numeric_dtype(obs[column]) or pd.api.types.is_bool_dtype(obs[column]):
            obs[column] = obs[column].astype(str).astype("category")
    layers = {"counts": cells.layers["counts"]} if "counts" in cells.layers else {}
    return ad.AnnData(X=cells.X, obs=obs, var=pd.DataFrame(index=cells.var_names.astype(str)), layers=layers)


def prediction_file(folder: str | Path, split: str, fold: str) -> Path:
    """Where the model's answer for one fold of an exported folder is (``predictions/<split>_<fold>.h5ad``)."""
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    for entry in manifest["folds"]:
        if entry["split"] == split and str(entry["fold"]) == str(fold):
            return folder / PREDICTIONS / f"{entry['folder']}.h5ad"
    raise NotApplicable(f"{str(folder)!r} holds no fold {fold!r} of split {split!r} (it was exported with "
                        f"{sorted({(e['split'], e['fold']) for e in manifest['folds']})}): the model was not run on it")
