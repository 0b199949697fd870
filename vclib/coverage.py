"""Context coverage: which perturbations were measured in which contexts."""

from __future__ import annotations

import anndata as ad
import pandas as pd

from vclib.schema import CONTEXT_KEY, CONTROL, PERTURBATION_KEY, check_columns


def cell_counts(
    adata: ad.AnnData,
    *,
    perturbation_key: str = PERTURBATION_KEY,
    context_key: str = CONTEXT_KEY,
) -> pd.DataFrame:
    """Cells per perturbation (rows) and context (columns); 0 where a perturbation was not measured.

    Parameters
    ----------
    adata
        Cells in the data contract.
    perturbation_key, context_key
        obs columns.

    Returns
    -------
    DataFrame of int, index ``perturbation`` sorted with the control first, columns ``context``.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> vc.coverage.cell_counts(adata).loc["control"].tolist()
    [200, 200]
    """
    check_columns(adata.obs, [perturbation_key, context_key])
    table = pd.crosstab(adata.obs[perturbation_key].astype(str), adata.obs[context_key].astype(str))
    table.index.name, table.columns.name = PERTURBATION_KEY, CONTEXT_KEY
    order = sorted(table.index, key=lambda p: (p != CONTROL, p))
    return table.loc[order]
