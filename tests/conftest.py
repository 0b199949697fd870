"""Shared fixtures: the embedded simulator builds the test data once per session; each test gets a copy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import vclib as vc

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("VCLIB_REAL_DATA", ROOT.parent / "shared" / "real-data"))


def real_file(relative: str) -> Path:
    """Path of a file under ../shared/real-data; skips the test where that folder is absent."""
    path = REAL_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} not found: the real-data folder ../shared/real-data is absent on this machine")
    return path


@pytest.fixture(scope="session")
def _small_sim():
    return vc.loaders.simulate(n_contexts=3, n_perturbations=12, n_combinations=3, n_genes=120,
                               cells_per_condition=20, control_cells=40, seed=7)


@pytest.fixture
def sim(_small_sim):
    """A small simulated dataset in the data contract (a fresh copy per test)."""
    return _small_sim.copy()


def pytest_terminal_summary(terminalreporter):
    """Print what tests recorded as ``record_property("timing", ...)`` (the browser tests' seconds per notebook);
    the properties travel with the reports, so this works under pytest-xdist too."""
    lines = [f"{report.nodeid.split('::')[-1]}: {value}" for reports in terminalreporter.stats.values()
             for report in reports if getattr(report, "when", None) == "call"
             for name, value in getattr(report, "user_properties", ()) if name == "timing"]
    if lines:
        terminalreporter.section("timings")
        for line in lines:
            terminalreporter.write_line(line)
