"""The registry of public datasets: entries, recipes on each source's exact layout, the real download path
against a local HTTP server on 127.0.0.1, the cache, the command line, and biology checks on real subsets."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import re
import socket
import threading
import warnings
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from conftest import ROOT, real_file
from scipy import sparse

import vclib as vc
from vclib import cli
from vclib.loaders import REGISTRY, DownloadError

GENES = [f"G{i}" for i in range(24)] + ["KLF1", "MAP2K6", "TMSB4X", "HSPA14"]


# ---------------------------------------------------------------- tiny files in each source's exact layout --


def _counts(n_cells: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(4.0, size=(n_cells, len(GENES))).astype(np.float32)


def _log1p(counts: np.ndarray, target_sum: float | None = 1e4) -> sparse.csr_matrix:
    x = ad.AnnData(counts.copy())
    sc.pp.normalize_total(x, target_sum=target_sum)
    sc.pp.log1p(x)
    return sparse.csr_matrix(x.X)


def _scperturb_norman() -> ad.AnnData:
    """scPerturb NormanWeissman2019_filtered.h5ad: raw counts, obs['perturbation'] with 'control' and 'A_B'."""
    labels = ["control"] * 4 + ["KLF1"] * 3 + ["KLF1_MAP2K6"] * 2 + ["MAP2K6_KLF1"] * 2
    obs = pd.DataFrame({"perturbation": labels, "cell_line": "K562", "nperts": [len(x.split("_")) for x in labels]},
                       index=[f"c{i}" for i in range(len(labels))])
    var = pd.DataFrame({"ensemble_id": [f"ENSG{i:05d}" for i in range(len(GENES))]}, index=GENES)
    return ad.AnnData(sparse.csr_matrix(_counts(len(labels))), obs=obs, var=var)


def _gears(cell_type: str = "K562") -> ad.AnnData:
    """GEARS perturb_processed.h5ad: log1p X, obs 'condition' ('ctrl', 'A+ctrl', 'A+B'), var 'gene_name'."""
    conditions = ["ctrl"] * 4 + ["KLF1+ctrl"] * 3 + ["ctrl+MAP2K6"] * 2 + ["KLF1+MAP2K6"] * 3
    obs = pd.DataFrame({"condition": conditions, "cell_type": cell_type,
                        "dose_val": ["1+1" if "ctrl" not in c else "1" for c in conditions],
                        "control": [int(c == "ctrl") for c in conditions]}, index=[f"c{i}" for i in range(12)])
    obs["condition_name"] = obs["cell_type"] + "_" + obs["condition"] + "_" + obs["dose_val"]
    var = pd.DataFrame({"gene_name": GENES}, index=[f"ENSG{i:05d}" for i in range(len(GENES))])
    return ad.AnnData(_log1p(_counts(12, seed=1)), obs=obs, var=var)


def _scperturb_crispri(control: str = "control", cell_line: str = "K562") -> ad.AnnData:
    """scPerturb Replogle/Nadig files: counts, obs 'perturbation' (= authors' 'gene'), some unlabelled cells."""
    labels = [control] * 4 + ["KLF1"] * 3 + ["MAP2K6"] * 3 + ["nan"] * 2
    obs = pd.DataFrame({"perturbation": labels, "gene": labels, "cell_line": cell_line,
                        "guide_id": [f"{x}_g1" for x in labels]}, index=[f"{cell_line}_c{i}" for i in range(12)])
    var = pd.DataFrame({"ensembl_id": [f"ENSG{i:05d}" for i in range(len(GENES))]}, index=GENES)
    return ad.AnnData(sparse.csr_matrix(_counts(12, seed=2)), obs=obs, var=var)


def _pertpy_kang() -> ad.AnnData:
    """pertpy kang_2018.h5ad: counts, obs 'label' ('ctrl'/'stim'), 'cell_type', 'replicate'."""
    cell_types = ["CD4 T cells"] * 6 + ["CD14+ Monocytes"] * 6
    labels = ["ctrl", "ctrl", "ctrl", "stim", "stim", "stim"] * 2
    obs = pd.DataFrame({"label": labels, "cell_type": cell_types, "replicate": ["patient_101", "patient_107"] * 6},
                       index=[f"c{i}" for i in range(12)])
    counts = _counts(12, seed=3)
    return ad.AnnData(sparse.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=GENES),
                      layers={"counts": sparse.csr_matrix(counts)})


def _scperturb_sciplex3() -> ad.AnnData:
    """scPerturb SrivatsanTrapnell2020_sciplex3.h5ad: counts, 'perturbation' (drug or 'control'), doses, lines."""
    rows = []
    for line in ["A549", "K562", "MCF7"]:
        rows += [("control", 0.0, line)] * 2
        for drug in ["(+)-JQ1", "ENMD-2076 L-(+)-Tartaric acid", "Dasatinib"]:
            rows += [(drug, 10.0, line), (drug, 10000.0, line)]
    obs = pd.DataFrame(rows, columns=["perturbation", "dose_value", "cell_line"],
                       index=[f"c{i}" for i in range(len(rows))])
    obs["dose_unit"] = "nM"
    var = pd.DataFrame({"ensembl_id": [f"ENSG{i:05d}" for i in range(len(GENES))]},
                       index=GENES[:-1] + ["KLF1"])  # a duplicated symbol, as Ensembl-to-symbol maps produce
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Variable names are not unique", UserWarning)
        return ad.AnnData(sparse.csr_matrix(_counts(len(rows), seed=4)), obs=obs, var=var)


def _perturbench_mcfaline() -> ad.AnnData:
    """PerturBench mcfaline23_gxe_processed.h5ad: log1p X (median target), counts layer, condition/treatment."""
    rows = []
    for line in ["a172", "t98g", "u87mg"]:
        for condition in ["control", "MAPK1"]:
            for treatment in ["none", "trametinib"]:
                rows += [(condition, treatment, line)] * 2
    obs = pd.DataFrame(rows, columns=["condition", "treatment", "cell_type"], index=[f"c{i}" for i in range(len(rows))])
    obs["perturbation_type"], obs["dataset"] = "CRISPRi", "mcfaline23"
    counts = _counts(len(rows), seed=5)
    return ad.AnnData(_log1p(counts, target_sum=None), obs=obs, var=pd.DataFrame(index=GENES),
                      layers={"counts": sparse.csr_matrix(counts)})


def _openproblems_neurips() -> ad.AnnData:
    """Open Problems sc_counts_reannotated_with_counts.h5ad: counts in .raw, 'sm_name', 'cell_type', donors."""
    rows = [(drug, cell_type, donor) for cell_type in ["T cells", "B cells"]
            for drug in ["Dimethyl Sulfoxide", "Belinostat"] for donor in ["Donor 1", "Donor 2"]]
    obs = pd.DataFrame(rows, columns=["sm_name", "cell_type", "donor_id"], index=[f"c{i}" for i in range(len(rows))])
    counts = _counts(len(rows), seed=6)
    raw = ad.AnnData(sparse.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=GENES))
    adata = raw.copy()
    adata.X = _log1p(counts)
    adata.raw = raw
    return adata


# name: (builder, expected perturbations, expected contexts, what X held)
LAYOUTS = {
    "norman_2019": (_scperturb_norman, {"control", "KLF1", "KLF1+MAP2K6"}, {"K562"}, "counts"),
    "norman_2019_gears": (_gears, {"control", "KLF1", "MAP2K6", "KLF1+MAP2K6"}, {"K562"}, "log1p"),
    "adamson_2016": (_gears, {"control", "KLF1", "MAP2K6", "KLF1+MAP2K6"}, {"K562"}, "log1p"),
    "replogle_2022_k562_essential_gears": (_gears, {"control", "KLF1", "MAP2K6", "KLF1+MAP2K6"}, {"K562"}, "log1p"),
    "replogle_2022_rpe1_essential_gears": (functools.partial(_gears, "rpe1"),
                                           {"control", "KLF1", "MAP2K6", "KLF1+MAP2K6"}, {"RPE1"}, "log1p"),
    "replogle_2022_k562_essential": (functools.partial(_scperturb_crispri, "non-targeting"),
                                     {"control", "KLF1", "MAP2K6"}, {"K562"}, "counts"),
    "replogle_2022_rpe1_essential": (functools.partial(_scperturb_crispri, "control", "hTERT-RPE1"),
                                     {"control", "KLF1", "MAP2K6"}, {"RPE1"}, "counts"),
    "nadig_2025_hepg2": (functools.partial(_scperturb_crispri, "control", "Hep-G2"),
                         {"control", "KLF1", "MAP2K6"}, {"HepG2"}, "counts"),
    "nadig_2025_jurkat": (functools.partial(_scperturb_crispri, "control", "Jurkat"),
                          {"control", "KLF1", "MAP2K6"}, {"Jurkat"}, "counts"),
    "kang_2018": (_pertpy_kang, {"control", "stim"}, {"CD4 T cells", "CD14+ Monocytes"}, "counts"),
    "srivatsan_2020_sciplex3": (_scperturb_sciplex3, {"control", "JQ1", "ENMD-2076", "Dasatinib"},
                                {"A549", "K562", "MCF7"}, "counts"),
    "mcfaline_figueroa_2023": (_perturbench_mcfaline, {"control", "MAPK1", "trametinib", "MAPK1+trametinib"},
                               {"a172", "t98g", "u87mg"}, "log1p"),
    "neurips_2023_pbmc": (_openproblems_neurips, {"control", "Belinostat"}, {"T cells", "B cells"}, "counts"),
}


def test_every_downloadable_entry_has_a_recipe_test():
    assert set(LAYOUTS) == {name for name, d in REGISTRY.items() if not d.components}


@pytest.mark.filterwarnings("ignore:Variable names are not unique")  # sci-Plex3's, renamed by the recipe
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_recipe_maps_the_source_layout_into_the_contract(name):
    build, perturbations, contexts, found = LAYOUTS[name]
    source = build()
    before = source.copy()
    out = vc.loaders.harmonise(source, name)
    vc.schema.validate(out)
    assert set(out.obs["perturbation"]) == perturbations
    assert set(out.obs["context"]) == contexts
    assert out.uns["vclib"]["found"] == found
    assert out.uns["vclib"]["dataset"]["name"] == name
    assert out.var_names.is_unique
    # the input is untouched
    assert list(source.obs.columns) == list(before.obs.columns)
    assert (source.obs.index == before.obs.index).all()
    # every context has its controls
    assert set(out.obs.loc[out.obs["perturbation"] == "control", "context"]) == contexts


def test_gears_gene_symbols_become_gene_names():
    out = vc.loaders.harmonise(_gears(), "norman_2019_gears")
    assert list(out.var_names) == GENES
    assert set(out.obs["perturbation_original"]) == {"ctrl", "KLF1+ctrl", "ctrl+MAP2K6", "KLF1+MAP2K6"}


def test_scperturb_unlabelled_cells_are_dropped_and_counted():
    out = vc.loaders.harmonise(_scperturb_crispri("non-targeting"), "replogle_2022_k562_essential")
    assert out.n_obs == 10
    assert out.uns["vclib"]["dataset"]["cells_dropped_unlabelled"] == 2


def test_sciplex_keeps_the_top_dose_and_vehicle():
    source = _scperturb_sciplex3()
    out = vc.loaders.harmonise(source, "srivatsan_2020_sciplex3")
    expected = (source.obs["dose_value"] == 10000) | (source.obs["perturbation"] == "control")
    assert out.n_obs == int(expected.sum())
    assert out.uns["vclib"]["dataset"]["cells_not_selected"] == int((~expected).sum())
    assert out.uns["vclib"]["dataset"]["duplicated_genes_renamed"] == 1


def test_neurips_counts_come_from_raw():
    source = _openproblems_neurips()
    out = vc.loaders.harmonise(source, "neurips_2023_pbmc")
    assert out.uns["vclib"]["dataset"]["matrix"] == "raw"
    np.testing.assert_array_equal(out.layers["counts"].toarray(), source.raw.X.toarray())


def test_mcfaline_drug_on_knockdown_is_a_combination():
    out = vc.loaders.harmonise(_perturbench_mcfaline(), "mcfaline_figueroa_2023")
    pairs = out.obs[["perturbation_original", "perturbation"]].astype(str).drop_duplicates()
    assert set(map(tuple, pairs.to_numpy())) == {("control", "control"), ("control", "trametinib"),
                                                 ("MAPK1", "MAPK1"), ("MAPK1", "MAPK1+trametinib")}


def test_layout_change_is_reported():
    with pytest.raises(vc.schema.VclibInputError, match=r"obs has no column 'label'.*layout"):
        vc.loaders.harmonise(_gears(), "kang_2018")


def test_registry_entries_are_complete():
    for name, entry in REGISTRY.items():
        assert re.fullmatch(r"[a-z0-9_]+", name)
        assert entry.citation and entry.contexts and entry.perturbation_type and entry.source
        if entry.components:
            assert all(c in REGISTRY and not REGISTRY[c].components for c in entry.components)
            continue
        assert entry.url.startswith("https://") and entry.url_source and entry.filename and entry.recipe
        assert entry.known_hash is None or re.fullmatch(r"md5:[0-9a-f]{32}", entry.known_hash)
    filenames = [d.filename for d in REGISTRY.values() if d.filename]
    assert len(filenames) == len(set(filenames))


# ------------------------------------------------------------------------- the cache and available() --


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VCLIB_DATA_DIR", str(tmp_path))
    assert vc.loaders.cache_dir() == tmp_path
    monkeypatch.delenv("VCLIB_DATA_DIR")
    assert vc.loaders.cache_dir() == ROOT / "data" / "cache"  # a writable source checkout


def test_available_shows_what_is_cached(tmp_path):
    table = vc.loaders.available(cache_dir=tmp_path)
    assert list(table["name"]) == list(REGISTRY)
    assert not table["cached"].any()
    (tmp_path / REGISTRY["kang_2018"].filename).write_bytes(b"x")
    (tmp_path / REGISTRY["nadig_2025_hepg2"].filename).write_bytes(b"x")
    cached = vc.loaders.available(cache_dir=tmp_path).set_index("name")["cached"]
    assert cached["kang_2018"] and cached["nadig_2025_hepg2"]
    assert not cached["nadig_2025"]  # needs both of its files
    (tmp_path / REGISTRY["nadig_2025_jurkat"].filename).write_bytes(b"x")
    assert vc.loaders.available(cache_dir=tmp_path).set_index("name").loc["nadig_2025", "cached"]


# ------------------------------------------------------- downloads, for real, from a server on 127.0.0.1 --


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving the folder ``root``; yields (base URL, root)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _md5(path: Path) -> str:
    return "md5:" + hashlib.md5(path.read_bytes()).hexdigest()


def _serve_kang(server) -> tuple[vc.loaders.Dataset, Path]:
    base, root = server
    served = root / "kang_copy.h5ad"
    _pertpy_kang().write_h5ad(served)
    entry = dataclasses.replace(REGISTRY["kang_2018"], url=f"{base}/kang_copy.h5ad", known_hash=_md5(served))
    return entry, served


def test_download_verifies_the_checksum_and_caches(server, tmp_path):
    entry, served = _serve_kang(server)
    cache = tmp_path / "cache"
    (path,) = vc.loaders.fetch(entry, cache_dir=cache, progressbar=False)
    assert path == cache / "kang_2018.h5ad"
    assert path.read_bytes() == served.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == ["kang_2018.h5ad"]  # no temporary leftovers
    # a second call is served from the cache, even with the server gone
    offline = dataclasses.replace(entry, url="http://127.0.0.1:9/nothing-here")
    assert vc.loaders.fetch(offline, cache_dir=cache, progressbar=False) == [path]


def test_mirror_serves_the_registry_files_under_their_cache_names(server, tmp_path, monkeypatch):
    base, root = server
    _pertpy_kang().write_h5ad(root / "kang_2018.h5ad")  # a mirror holds the file under its cache name
    monkeypatch.setenv("VCLIB_DATA_MIRROR", base + "/")
    assert vc.loaders.fetch("kang_2018", cache_dir=tmp_path / "cache", progressbar=False) == [
        tmp_path / "cache" / "kang_2018.h5ad"]
    assert (tmp_path / "cache" / "kang_2018.h5ad").read_bytes() == (root / "kang_2018.h5ad").read_bytes()
    (root / "kang_2018.h5ad").write_bytes(b"not an h5ad")  # verified the same way as the public address
    with pytest.raises(DownloadError, match=re.escape(f"{base}/kang_2018.h5ad")):
        vc.loaders.fetch("kang_2018", cache_dir=tmp_path / "other", progressbar=False)


def test_load_by_name_reads_the_cache_into_the_contract(server, tmp_path):
    entry, _ = _serve_kang(server)
    cache = tmp_path / "cache"
    vc.loaders.fetch(entry, cache_dir=cache, progressbar=False)
    adata = vc.loaders.load("kang_2018", cache_dir=cache, download=False)
    vc.schema.validate(adata)
    assert set(adata.obs["perturbation"]) == {"control", "stim"}
    assert adata.uns["vclib"]["source"] == "kang_2018"
    assert adata.uns["vclib"]["dataset"]["url"] == REGISTRY["kang_2018"].url


def test_progress_bar_is_shown(server, tmp_path, capsys):
    entry, _ = _serve_kang(server)
    vc.loaders.fetch(entry, cache_dir=tmp_path / "cache", progressbar=True)
    assert "%" in capsys.readouterr().err


def test_checksum_mismatch_keeps_nothing(server, tmp_path):
    entry, _ = _serve_kang(server)
    wrong = dataclasses.replace(entry, known_hash="md5:" + "0" * 32)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=r"does not match its published checksum.*Nothing was kept") as err:
        vc.loaders.fetch(wrong, cache_dir=cache, progressbar=False)
    assert wrong.url in str(err.value) and "'kang_2018.h5ad'" in str(err.value)
    assert list(cache.iterdir()) == []  # neither the file nor a partial download


def test_missing_file_on_the_server_says_where_to_put_a_manual_copy(server, tmp_path):
    base, _ = server
    entry = dataclasses.replace(REGISTRY["nadig_2025_hepg2"], url=f"{base}/gone.h5ad")
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as err:
        vc.loaders.fetch(entry, cache_dir=cache, progressbar=False)
    message = str(err.value)
    assert f"{base}/gone.h5ad" in message and "404" in message
    assert "'NadigOConner2024_hepg2.h5ad'" in message and str(cache / "NadigOConner2024_hepg2.h5ad") in message
    assert "af2be47f7477cf32fa6e4bec1c6a4868" in message and "VCLIB_DATA_DIR" in message
    assert not (cache / "NadigOConner2024_hepg2.h5ad").exists()


def test_offline_download_fails_with_the_same_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    entry = dataclasses.replace(REGISTRY["kang_2018"], url=f"http://127.0.0.1:{port}/kang.h5ad")
    with pytest.raises(DownloadError, match=r"could not download dataset 'kang_2018' from http://127\.0\.0\.1.*"
                                            r"ConnectionError.*save it as 'kang_2018.h5ad'"):
        vc.loaders.fetch(entry, cache_dir=tmp_path, progressbar=False)


def test_manual_copy_is_used_and_checked_offline(tmp_path):
    entry = dataclasses.replace(REGISTRY["kang_2018"], url="http://127.0.0.1:9/unreachable")
    manual = tmp_path / "kang_2018.h5ad"
    _pertpy_kang().write_h5ad(manual)
    good = dataclasses.replace(entry, known_hash=_md5(manual))
    assert vc.loaders.fetch(good, cache_dir=tmp_path, download=False) == [manual]
    assert vc.loaders.fetch(good, cache_dir=tmp_path, progressbar=False) == [manual]
    bad = dataclasses.replace(entry, known_hash="md5:" + "1" * 32)
    with pytest.raises(DownloadError, match="not the published"):
        vc.loaders.fetch(bad, cache_dir=tmp_path, download=False)
    with pytest.raises(DownloadError, match="does not match the published checksum"):
        vc.loaders.fetch(bad, cache_dir=tmp_path, progressbar=False)


def test_not_cached_without_download(tmp_path):
    with pytest.raises(DownloadError, match=r"not in the cache.*vclib datasets get kang_2018"):
        vc.loaders.load("kang_2018", cache_dir=tmp_path, download=False)


def test_gears_zip_is_downloaded_and_unpacked(server, tmp_path):
    base, root = server
    inner = tmp_path / "perturb_processed.h5ad"
    _gears().write_h5ad(inner)
    with zipfile.ZipFile(root / "norman.zip", "w") as zf:
        zf.write(inner, "norman/perturb_processed.h5ad")
        zf.writestr("norman/go_essential_norman.csv", "source,target\n")
    entry = dataclasses.replace(REGISTRY["norman_2019_gears"], url=f"{base}/norman.zip",
                                known_hash=_md5(root / "norman.zip"))
    cache = tmp_path / "cache"
    (path,) = vc.loaders.fetch(entry, cache_dir=cache, progressbar=False)
    assert path.name == "gears_norman_perturb_processed.h5ad"
    assert path.read_bytes() == inner.read_bytes()
    assert not [p for p in cache.iterdir() if p.suffix == ".part"]
    adata = vc.loaders.load("norman_2019_gears", cache_dir=cache, download=False)
    assert set(adata.obs["perturbation"]) == {"control", "KLF1", "MAP2K6", "KLF1+MAP2K6"}


def test_gzip_download_is_unpacked(server, tmp_path):
    base, root = server
    inner = tmp_path / "mcfaline.h5ad"
    _perturbench_mcfaline().write_h5ad(inner)
    (root / "mcfaline.h5ad.gz").write_bytes(gzip.compress(inner.read_bytes()))
    entry = dataclasses.replace(REGISTRY["mcfaline_figueroa_2023"], url=f"{base}/mcfaline.h5ad.gz")
    (path,) = vc.loaders.fetch(entry, cache_dir=tmp_path / "cache", progressbar=False)
    assert path.name == "mcfaline23_gxe_processed.h5ad" and path.read_bytes() == inner.read_bytes()


# ------------------------------------ downloads without a checksum: cut short, wrong size, stale in the cache --


class _CutHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files[path] = (body, content_length)``: exactly ``body``, with a Content-Length header
    only if one is given (HTTP/1.0: the connection closes after the body, so the client cannot tell it is
    cut short unless a Content-Length says so). Every request's path is appended to ``server.hits``."""

    def do_GET(self):
        self.server.hits.append(self.path)
        if self.path not in self.server.files:
            self.send_error(404)
            return
        body, length = self.server.files[self.path]
        self.send_response(200)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def cut_server(monkeypatch):
    """An HTTP server on 127.0.0.1 with :class:`_CutHandler`; yields (base URL, files, hits)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CutHandler)
    httpd.files, httpd.hits = {}, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.files, httpd.hits
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _no_checksum_entry(kind: str, base: str, tmp_path: Path) -> tuple[vc.loaders.Dataset, bytes]:
    """A registry entry without checksum served at ``{base}/{kind}``, and the complete bytes of its file: a
    small h5ad (kang_2018), a zip holding one (norman_2019_gears) or a gzip of one (mcfaline_figueroa_2023)."""
    h5ad = tmp_path / "small.h5ad"
    ad.AnnData(X=np.ones((3, 2), dtype=np.float32)).write_h5ad(h5ad)
    name, payload = {"h5ad": ("kang_2018", h5ad.read_bytes()),
                     "zip": ("norman_2019_gears", None),
                     "gz": ("mcfaline_figueroa_2023", gzip.compress(h5ad.read_bytes()))}[kind]
    if kind == "zip":
        with zipfile.ZipFile(tmp_path / "small.zip", "w") as zf:
            zf.write(h5ad, "norman/perturb_processed.h5ad")
        payload = (tmp_path / "small.zip").read_bytes()
    entry = dataclasses.replace(REGISTRY[name], url=f"{base}/{kind}", known_hash=None, size_bytes=None)
    return entry, payload


def _fetch_again_succeeds(entry, payload, files, hits, cache):
    """The server now sends the whole file: fetch downloads it and caches exactly the download (+ its h5ad)."""
    files[f"/{entry.url.rsplit('/', 1)[1]}"] = (payload, len(payload))
    n_hits = len(hits)
    (path,) = vc.loaders.fetch(entry, cache_dir=cache, progressbar=False)
    assert len(hits) == n_hits + 1
    assert path == cache / entry.h5ad_name and (cache / entry.filename).read_bytes() == payload
    assert sorted(p.name for p in cache.iterdir()) == sorted({entry.filename, entry.h5ad_name})
    ad.read_h5ad(path)


def test_truncated_h5ad_without_content_length_is_not_cached(cut_server, tmp_path):
    base, files, hits = cut_server
    entry, payload = _no_checksum_entry("h5ad", base, tmp_path)
    files["/h5ad"] = (payload[: len(payload) // 2], None)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=r"is not a complete h5ad \(OSError: .*truncated file.*\): the download "
                                            r"was cut short.*Nothing was kept in the cache\. Try again") as err:
        vc.loaders.fetch(entry, cache_dir=cache, progressbar=False)
    assert f"{base}/h5ad" in str(err.value) and "save it as 'kang_2018.h5ad'" in str(err.value)
    assert list(cache.iterdir()) == []
    _fetch_again_succeeds(entry, payload, files, hits, cache)


def test_download_of_the_wrong_size_is_not_cached(cut_server, tmp_path):
    base, files, hits = cut_server
    entry, payload = _no_checksum_entry("h5ad", base, tmp_path)
    entry = dataclasses.replace(entry, size_bytes=len(payload))
    half = len(payload) // 2
    files["/h5ad"] = (payload[:half], None)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=rf"from {base}/h5ad for dataset 'kang_2018' is {half} bytes, the "
                                            rf"source states {len(payload)}: the download was cut short"):
        vc.loaders.fetch(entry, cache_dir=cache, progressbar=False)
    assert list(cache.iterdir()) == []
    _fetch_again_succeeds(entry, payload, files, hits, cache)


def test_response_shorter_than_its_content_length_is_not_cached(cut_server, tmp_path):
    """requests/urllib3 (as pooch uses them) raise on a body shorter than its Content-Length."""
    base, files, hits = cut_server
    entry, payload = _no_checksum_entry("h5ad", base, tmp_path)
    files["/h5ad"] = (payload[: len(payload) // 2], len(payload))
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=rf"could not download dataset 'kang_2018' from {base}/h5ad "
                                            r"\(ChunkedEncodingError: .*IncompleteRead.*Nothing was kept"):
        vc.loaders.fetch(entry, cache_dir=cache, progressbar=False)
    assert list(cache.iterdir()) == []
    _fetch_again_succeeds(entry, payload, files, hits, cache)


def test_cut_zip_is_not_cached(cut_server, tmp_path):
    base, files, hits = cut_server
    entry, payload = _no_checksum_entry("zip", base, tmp_path)
    files["/zip"] = (payload[: len(payload) // 2], None)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=r"for dataset 'norman_2019_gears' is not a complete zip "
                                            r"\(BadZipFile: File is not a zip file\): the download was cut short"):
        vc.loaders.fetch(entry, cache_dir=cache, progressbar=False)
    assert list(cache.iterdir()) == []  # neither the zip nor an unpacked h5ad
    _fetch_again_succeeds(entry, payload, files, hits, cache)


def test_cut_gzip_is_not_cached(cut_server, tmp_path):
    base, files, hits = cut_server
    entry, payload = _no_checksum_entry("gz", base, tmp_path)
    files["/gz"] = (payload[: len(payload) // 2], None)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=r"for dataset 'mcfaline_figueroa_2023' is not a complete gz \(EOFError: "
                                            r"Compressed file ended before the end-of-stream marker was reached\)"):
        vc.loaders.fetch(entry, cache_dir=cache, progressbar=False)
    assert list(cache.iterdir()) == []
    _fetch_again_succeeds(entry, payload, files, hits, cache)


@pytest.mark.parametrize(("kind", "problem"), [
    ("h5ad", r"is not a complete h5ad \(OSError: .*truncated file"),
    ("zip", r"cannot be unpacked \(BadZipFile: File is not a zip file\)"),
    ("gz", r"cannot be unpacked \(EOFError: Compressed file ended"),
])
def test_cut_file_already_in_the_cache_is_deleted_and_downloaded_again(cut_server, tmp_path, kind, problem):
    """A file without checksum cut short by an older vclib: re-verified before reuse, deleted, downloaded once."""
    base, files, hits = cut_server
    entry, payload = _no_checksum_entry(kind, base, tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / entry.filename).write_bytes(payload[: len(payload) // 2])
    with pytest.raises(DownloadError, match=rf"the cached file .*{problem}.*, so it was deleted\. Fetch"):
        vc.loaders.fetch(entry, cache_dir=cache, download=False)
    assert list(cache.iterdir()) == [] and hits == []
    (cache / entry.filename).write_bytes(payload[: len(payload) // 2])
    _fetch_again_succeeds(entry, payload, files, hits, cache)
    assert hits == [f"/{kind}"]
    assert vc.loaders.fetch(entry, cache_dir=cache, progressbar=False) == [cache / entry.h5ad_name]
    assert hits == [f"/{kind}"]  # a complete cached file is reused without contacting the server


def test_entries_without_a_checksum_are_named_in_the_module_docstring():
    from vclib.loaders import _registry

    unhashed = {d.name for d in REGISTRY.values() if not d.components and d.known_hash is None}
    named = set(re.findall(r"``(\w+)``", _registry.__doc__.split("Entries without a checksum")[1]))
    assert unhashed <= named and not (named & {d.name for d in REGISTRY.values() if d.known_hash})


def test_union_of_cell_lines_is_one_anndata(tmp_path):
    for name, line in [("replogle_2022_k562_essential", "K562"), ("replogle_2022_rpe1_essential", "hTERT-RPE1")]:
        part = _scperturb_crispri("non-targeting" if line == "K562" else "control", line)
        if line != "K562":
            part = part[:, GENES[2:]].copy()  # one file measures fewer genes
        part.write_h5ad(tmp_path / REGISTRY[name].filename)
    entries = {n: dataclasses.replace(REGISTRY[n], known_hash=None)
               for n in ("replogle_2022_k562_essential", "replogle_2022_rpe1_essential")}
    from vclib.loaders import _registry

    registry = dict(_registry.REGISTRY)
    registry.update(entries)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_registry, "REGISTRY", registry)
        adata = vc.loaders.load("replogle_2022_essential", cache_dir=tmp_path, download=False)
    vc.schema.validate(adata)
    assert set(adata.obs["context"]) == {"K562", "RPE1"}
    assert list(adata.var_names) == GENES[2:]
    assert adata.obs_names.is_unique and adata.n_obs == 20
    assert [c["name"] for c in adata.uns["vclib"]["dataset"]["components"]] == list(entries)


def test_load_rejects_options_that_do_not_apply(tmp_path):
    with pytest.raises(vc.schema.VclibInputError, match="do not apply to the registered dataset"):
        vc.loaders.load("kang_2018", layer="counts")
    with pytest.raises(vc.schema.VclibInputError, match="values='log1p' applies to a file; 'kang_2018' knows"):
        vc.loaders.load("kang_2018", values="log1p")


# ---------------------------------------------------------------------------------- the command line --


def test_cli_lists_the_registry(capsys, tmp_path):
    assert cli.main(["datasets", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in REGISTRY:
        assert name in out
    assert str(tmp_path) in out


def test_cli_get_prints_the_cached_file(capsys, tmp_path):
    _pertpy_kang().write_h5ad(tmp_path / "kang_2018.h5ad")  # no checksum published: used as it is
    assert cli.main(["datasets", "get", "kang_2018", "--cache-dir", str(tmp_path), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "kang_2018.h5ad")


def test_cli_get_reports_failures(capsys, tmp_path, server, monkeypatch):
    from vclib.loaders import _registry

    base, _ = server
    registry = dict(_registry.REGISTRY)
    registry["kang_2018"] = dataclasses.replace(registry["kang_2018"], url=f"{base}/missing.h5ad")
    monkeypatch.setattr(_registry, "REGISTRY", registry)
    assert cli.main(["datasets", "get", "kang_2018", "--cache-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{base}/missing.h5ad" in err and "kang_2018.h5ad" in err
    assert cli.main(["datasets", "get", "no_such_screen"]) == 2
    assert "registered:" in capsys.readouterr().err


def test_cli_get_fails_on_a_truncated_download(capsys, tmp_path, cut_server, monkeypatch):
    from vclib.loaders import _registry

    base, files, _ = cut_server
    entry, payload = _no_checksum_entry("h5ad", base, tmp_path)
    files["/h5ad"] = (payload[: len(payload) // 2], None)
    monkeypatch.setattr(_registry, "REGISTRY", {**_registry.REGISTRY, "kang_2018": entry})
    cache = tmp_path / "cache"
    argv = ["datasets", "get", "kang_2018", "--cache-dir", str(cache), "--no-progress"]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.search(rf"^vclib: the file downloaded from {base}/h5ad for dataset 'kang_2018' is not a complete "
                     r"h5ad \(OSError: .*truncated file", captured.err)
    assert list(cache.iterdir()) == []
    files["/h5ad"] = (payload, len(payload))
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == str(cache / "kang_2018.h5ad")


# ------------------------------------------- biology checks: recipes on real subsets of these datasets --


@pytest.mark.realdata
def test_kang_recipe_on_real_cells_shows_the_interferon_response():
    """The muscat subset of Kang 2018, rewritten in pertpy's layout, through the kang_2018 recipe."""
    muscat = ad.read_h5ad(real_file("kang2018_ifnb_pbmc_muscat_subset/kang2018_muscat_example_sce.h5ad"))
    obs = pd.DataFrame({"label": muscat.obs["group_id"].astype(str).to_numpy(),
                        "cell_type": muscat.obs["cluster_id"].astype(str).to_numpy(),
                        "replicate": muscat.obs["donor"].astype(str).to_numpy()}, index=muscat.obs_names)
    pertpy_layout = ad.AnnData(muscat.X, obs=obs, var=pd.DataFrame(index=muscat.var_names),
                               layers={"counts": muscat.layers["counts"]})
    adata = vc.loaders.harmonise(pertpy_layout, "kang_2018")
    assert set(adata.obs["perturbation"]) == {"control", "stim"}
    assert adata.obs["context"].nunique() == 5
    d = vc.pseudobulk.deltas(vc.pseudobulk.pseudobulk(adata))
    isg = ["ISG15", "IFIT3", "IFI6", "MX1", "ISG20"]
    assert (np.asarray(d[:, isg].X) > 0.5).all()  # up in every cell type


def _devel(dataset: str) -> ad.AnnData:
    devel = ad.read_h5ad(real_file("perturbench_devel_norman19_mcfaline23/devel.h5ad"))
    return devel[devel.obs["dataset"] == dataset].copy()


@pytest.mark.realdata
def test_norman_recipes_on_real_cells_agree_and_activate_the_target():
    """The Norman 2019 cells of PerturBench's devel file, rewritten in GEARS' and scPerturb's layouts."""
    norman = _devel("norman19")
    condition = norman.obs["condition"].astype(str)
    gears = ad.AnnData(norman.X, obs=pd.DataFrame(index=norman.obs_names),
                       var=pd.DataFrame({"gene_name": norman.var_names}, index=[f"ENSG{i}" for i in range(500)]))
    gears.obs["condition"] = condition.map(lambda c: "ctrl" if c == "control" else c if "+" in c else c + "+ctrl")
    gears.obs["cell_type"] = "K562"
    scperturb = ad.AnnData(norman.X, obs=pd.DataFrame(index=norman.obs_names), var=norman.var.copy())
    scperturb.obs["perturbation"] = condition.str.replace("+", "_", regex=False).to_numpy()
    expected = condition.map(lambda c: vc.schema.canonical_label(c, control="control"))  # pairs sorted
    for adata in (vc.loaders.harmonise(gears, "norman_2019_gears"), vc.loaders.harmonise(scperturb, "norman_2019")):
        assert (adata.obs["perturbation"].astype(str) == expected).all()
        assert adata.obs["perturbation"].str.contains("+", regex=False).any()
        pb = vc.pseudobulk.pseudobulk(adata)
        tmsb4x = pb[:, "TMSB4X"].X.ravel()
        assert tmsb4x[pb.obs["perturbation"] == "TMSB4X"] - tmsb4x[pb.obs["perturbation"] == "control"] > 1.0


@pytest.mark.realdata
def test_mcfaline_recipe_on_real_cells_gives_three_lines_with_the_same_knockdowns():
    adata = vc.loaders.harmonise(_devel("mcfaline23"), "mcfaline_figueroa_2023")
    assert set(adata.obs["context"]) == {"A172", "T98G", "U87MG"}
    per_line = adata.obs.groupby("context", observed=True)["perturbation"].agg(lambda s: frozenset(s))
    assert len(set(per_line)) == 1 and len(per_line.iloc[0]) == 10  # 9 knockdowns + control in every line
