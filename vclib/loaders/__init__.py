"""Loaders: read your own data into the data contract, simulate data, or fetch public screens by name.

* :func:`read`: an h5ad file or AnnData, with your column names, into the contract (validated).
* :func:`simulate`: the embedded context simulator, the default dataset of the notebooks and tests.
* :func:`load`: a dataset by name (``"simulated"`` or a registered public screen) or path, as the notebooks'
  ``DATASET`` parameter takes it.
* :func:`available`, :func:`fetch`, :func:`harmonise`, :data:`REGISTRY`: the registry of public perturbation
  screens (Norman 2019, Replogle 2022, Kang 2018, sci-Plex3, ...): download with checksum verification into a
  cache folder (:func:`cache_dir`, ``$VCLIB_DATA_DIR``), and each source's layout mapped into the contract.
"""

from vclib.loaders._load import load
from vclib.loaders._read import read
from vclib.loaders._registry import (
    REGISTRY,
    Dataset,
    DownloadError,
    Recipe,
    available,
    cache_dir,
    fetch,
    harmonise,
)
from vclib.loaders._simulate import simulate

__all__ = ["read", "simulate", "load", "available", "fetch", "harmonise", "cache_dir", "REGISTRY", "Dataset",
           "Recipe", "DownloadError"]
