"""Loaders: read your own data into the data contract, or simulate data with known ground truth.

* :func:`read`: an h5ad file or AnnData, with your column names, into the contract (validated).
* :func:`simulate`: the embedded context simulator, the default dataset of the notebooks and tests.
* :func:`load`: a dataset by name (``"simulated"``) or path, as the notebooks' ``DATASET`` parameter takes it.
"""

from vclib.loaders._load import load
from vclib.loaders._read import read
from vclib.loaders._simulate import simulate

__all__ = ["read", "simulate", "load"]
