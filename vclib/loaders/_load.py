"""Resolve the notebooks' ``DATASET`` parameter: ``"simulated"``, a registered public dataset, or an h5ad path."""

from __future__ import annotations

from pathlib import Path

import anndata as ad

from vclib.loaders._read import read
from vclib.loaders._registry import REGISTRY, load_registered
from vclib.loaders._simulate import simulate
from vclib.schema import VclibInputError

SIMULATED = "simulated"


def load(
    dataset: str | Path,
    *,
    perturbation_key: str = "perturbation",
    context_key: str | None = "context",
    control: str = "control",
    seed: int | None = 0,
    small: bool = False,
    context_divergence: float = 0.3,
    values: str = "auto",
    **options,
) -> ad.AnnData:
    """Load the dataset a notebook parameter names.

    Parameters
    ----------
    dataset
        ``"simulated"`` for the embedded simulator, the name of a registered public dataset (downloaded,
        verified and cached on first use; see :func:`vclib.loaders.available`), or a path to an ``.h5ad`` file.
    perturbation_key, context_key, control
        Your column names and control label (ignored for ``"simulated"`` and registered datasets, whose
        recipe knows them).
    seed
        Seed of the simulator.
    small
        For ``"simulated"``: a reduced design (fewer genes, cells and perturbations) for quick runs and tests.
    context_divergence
        For ``"simulated"``: fraction of regulatory mechanisms that differ between contexts.
    values
        For a file: what its matrix holds (:func:`vclib.loaders.read`: ``"auto"``, ``"counts"``, ``"log1p"``,
        ``"log2p"``, ``"signature"``). The simulator and registered datasets know their own.
    **options
        Passed on to :func:`vclib.loaders.simulate`, :func:`vclib.loaders.read`, or for a registered dataset
        to :func:`vclib.loaders.fetch` (``cache_dir``, ``download``, ``progressbar``).

    Returns
    -------
    AnnData in the data contract.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.load("simulated", small=True)
    >>> adata.uns["vclib"]["source"]
    'vclib.loaders.simulate'
    """
    if values != "auto" and (str(dataset) == SIMULATED or str(dataset) in REGISTRY):
        raise VclibInputError(f"values={values!r} applies to a file; {str(dataset)!r} knows what its values are "
                              "(leave values='auto').")
    if str(dataset) == SIMULATED:
        size = {"n_perturbations": 16, "n_combinations": 4, "n_genes": 200, "cells_per_condition": 30,
                "control_cells": 60} if small else {}
        return simulate(**{**size, **options}, context_divergence=context_divergence, seed=seed)
    if str(dataset) in REGISTRY:
        fetching = {"cache_dir", "download", "progressbar"}
        unknown = sorted(set(options) - fetching)
        if unknown:
            raise VclibInputError(
                f"option(s) {', '.join(unknown)} do not apply to the registered dataset {str(dataset)!r} (its "
                f"recipe sets the keys); it takes {', '.join(sorted(fetching))}."
            )
        return load_registered(str(dataset), **options)
    path = Path(dataset)
    if path.suffix != ".h5ad":
        raise VclibInputError(
            f"dataset {str(dataset)!r} is neither {SIMULATED!r}, a registered dataset ({', '.join(REGISTRY)}), "
            "nor a path to an .h5ad file."
        )
    return read(path, perturbation_key=perturbation_key, context_key=context_key, control=control, values=values,
                **options)
