"""vclib: a notebook workbench for testing virtual-cell claims.

``import vclib as vc`` gives the modules: ``vc.schema`` (the data contract), ``vc.loaders`` (read, simulate,
public datasets), ``vc.pseudobulk``, ``vc.coverage``, ``vc.metrics``, ``vc.splits``, ``vc.baselines``,
``vc.models``, ``vc.benchmark``, ``vc.failures``, ``vc.pl`` (plots), ``vc.widgets`` (notebook controls) and
``vc.runner`` (run the notebooks with papermill).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vclib")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

from vclib import (  # noqa: E402
    baselines,
    benchmark,
    coverage,
    failures,
    loaders,
    metrics,
    models,
    pl,
    pseudobulk,
    runner,
    schema,
    splits,
    widgets,
)

__all__ = ["baselines", "benchmark", "coverage", "failures", "loaders", "metrics", "models", "pl", "pseudobulk",
           "runner", "schema", "splits", "widgets", "__version__"]
