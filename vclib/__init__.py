"""vclib: a notebook workbench for testing virtual-cell claims.

``import vclib as vc`` gives the modules: ``vc.schema`` (the data contract), ``vc.loaders`` (read, simulate,
public datasets), ``vc.pseudobulk``, ``vc.coverage``, ``vc.metrics``, ``vc.splits``, ``vc.baselines``,
``vc.models``, ``vc.external`` (published models in their own environments), ``vc.benchmark``, ``vc.capacity``
(coverage versus capacity), ``vc.failures``, ``vc.pl`` (plots), ``vc.widgets`` (notebook controls) and
``vc.runner`` (run the notebooks with papermill).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vclib")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

_SUBMODULES = ("baselines", "benchmark", "capacity", "coverage", "external", "failures", "loaders", "metrics", "models",
               "pl", "pseudobulk", "report", "runner", "schema", "splits", "widgets")
__all__ = [*_SUBMODULES, "__version__"]


def __getattr__(name: str):
    """Import a submodule on first use (PEP 562), so ``import vclib`` is quick and the plotting, widget and
    notebook-running stacks (matplotlib, ipywidgets, papermill) load only when a module that needs them is used."""
    if name in _SUBMODULES:
        import importlib

        module = importlib.import_module(f"vclib.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'vclib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES])
