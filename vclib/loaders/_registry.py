"""Public perturbation screens by name: where each file lives, how to verify it, and how to read it.

Every entry of :data:`REGISTRY` records the public URL of one file as published by its authors or by the
projects that redistribute it (scPerturb, GEARS, pertpy, PerturBench, Open Problems), where that URL was
found, its checksum when one is published, and a :class:`Recipe` that maps the file's own layout (column
names, control label, combination syntax, normalisation) into vclib's data contract. The harmonisation goes
through :func:`vclib.loaders.read`, so the contract is checked in one place.

Downloads use `pooch <https://www.fatiando.org/pooch>`_: the file is streamed into a staging folder inside
the cache folder (``.partial-*``) and moved to its final name only once complete and verified, so an
interrupted or corrupt download never leaves a file that looks cached. A response shorter than its
Content-Length is an error (urllib3 raises it). Archives are unpacked the same way (temporary name, then
rename). The cache folder is ``$VCLIB_DATA_DIR``, else ``data/cache/`` of a source checkout, else the user
cache (``pooch.os_cache("vclib")``).

Entries without a checksum (``known_hash=None``): ``norman_2019_gears``, ``adamson_2016``,
``replogle_2022_k562_essential_gears``, ``replogle_2022_rpe1_essential_gears``, ``kang_2018``,
``srivatsan_2020_sciplex3``, ``mcfaline_figueroa_2023`` and ``neurips_2023_pbmc``. For these no checksum is
published and the file could not be hashed here (no internet access where the registry was written); it is
verified by size where the source states one (``size_bytes``) and by opening it: an h5ad must open with h5py
and anndata (a truncated HDF5 file does not), a zip must pass ``ZipFile.testzip``, a gzip stream must read to
its end. A download that fails is not kept; a cached file that fails (e.g. cut short by an older vclib) is
deleted and downloaded again once.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pooch

from vclib.loaders._read import read
from vclib.schema import COMBINATION_SEP, CONTEXT_KEY, MISSING_LABELS, PERTURBATION_KEY, VclibInputError, validate

ENV_VAR = "VCLIB_DATA_DIR"
MIRROR_VAR = "VCLIB_DATA_MIRROR"  # base URL of a mirror holding the registry's files under their cache names


def source_url(entry: Dataset) -> str:
    """Where an entry's file is downloaded from: its public URL, or ``$VCLIB_DATA_MIRROR/<filename>`` when that
    variable is set (an institutional or local mirror, e.g. for compute nodes without internet access). The
    file is verified the same way wherever it comes from.

    Examples
    --------
    >>> source_url(REGISTRY["kang_2018"])
    'https://figshare.com/ndownloader/files/34464122'
    """
    mirror = os.environ.get(MIRROR_VAR, "").strip()
    return f"{mirror.rstrip('/')}/{entry.filename}" if mirror else entry.url


class DownloadError(VclibInputError):
    """A registry file could not be downloaded or verified; the message says where to put a manual copy."""


@dataclass(frozen=True)
class Recipe:
    """How one source's file layout maps into the data contract.

    Attributes
    ----------
    perturbation_key, context_key, control, combination_sep, values
        As in :func:`vclib.loaders.read`. ``context_key=None`` for a single-context file, named
        ``context_label``.
    context_label
        Name of the only context of a single-context file (e.g. ``"K562"``).
    counts_from
        Where raw counts live, tried in order: ``"raw"`` (``adata.raw.X``) or a layer name. The first one
        present replaces ``X``; if none is, ``X`` is used as it is (its values are detected).
    gene_symbols
        var column with gene symbols to use as gene names (e.g. GEARS' ``gene_name``), if present.
    rename
        ``(old, new)`` label fixes applied first, e.g. a second spelling of the control, or drug names that
        contain ``"+"``, which the contract reserves for combinations.
    also_perturbed_by, untreated
        obs columns whose value is part of the perturbation (e.g. a drug given on top of a knockdown),
        joined with ``"+"`` unless it is one of ``untreated`` (e.g. ``"none"``).
    query
        A ``pandas.DataFrame.query`` expression on obs selecting the cells to keep (e.g. one dose).
    member
        File name of the h5ad inside a zip archive.
    """

    perturbation_key: str
    control: str
    context_key: str | None = None
    context_label: str | None = None
    combination_sep: str = COMBINATION_SEP
    values: str = "auto"
    counts_from: tuple[str, ...] = ()
    gene_symbols: str | None = None
    rename: tuple[tuple[str, str], ...] = ()
    also_perturbed_by: tuple[str, ...] = ()
    untreated: tuple[str, ...] = ()
    query: str | None = None
    member: str | None = None


@dataclass(frozen=True)
class Dataset:
    """One registered public dataset: a downloadable file and its :class:`Recipe`, or a union of entries.

    Attributes
    ----------
    name
        Registry name, as ``vc.loaders.load(name)`` and the notebooks' ``DATASET`` parameter take it.
    title, contexts, perturbation_type
        What the screen measured.
    citation, doi, licence
        The original publication and the licence stated by the source (or that none was found).
    source
        Who prepared the file (the authors, scPerturb, GEARS, pertpy, PerturBench, Open Problems).
    url, url_source
        The download URL and where it was found (repository and file, or documentation page).
    filename
        Name of the downloaded file in the cache folder (and of a manually downloaded copy).
    known_hash, hash_source
        ``"md5:..."`` when a checksum is published, else ``None``; and where it was published. ``None`` means
        no checksum is published and the file could not be hashed here (the registry was written without
        internet access); such a file is verified by size where the source states one and by opening it (see
        :func:`fetch`).
    size_bytes, size_source
        Size of the download when known, and where the figure comes from. Without a checksum, a download of
        another size is rejected.
    recipe
        The harmonisation into the data contract.
    components
        For a union of entries (the same perturbations in several cell lines): the entries' names.
    notes
        Anything a user should know before trusting the file.
    """

    name: str
    title: str
    contexts: tuple[str, ...]
    perturbation_type: str
    citation: str
    doi: str
    source: str
    licence: str = "not stated in the sources read"
    url: str | None = None
    url_source: str = ""
    filename: str | None = None
    known_hash: str | None = None
    hash_source: str = "none published"
    size_bytes: int | None = None
    size_source: str = ""
    recipe: Recipe | None = None
    components: tuple[str, ...] = ()
    notes: str = ""

    @property
    def h5ad_name(self) -> str | None:
        """Name of the h5ad in the cache folder (the download itself, or what is unpacked from it)."""
        if self.filename is None:
            return None
        if self.filename.endswith(".zip"):
            return f"{self.filename[:-4]}_{self.recipe.member}"
        if self.filename.endswith(".gz"):
            return self.filename[:-3]
        return self.filename


_SCPERTURB = ("Peidli S, Green TD et al. scPerturb: harmonized single-cell perturbation data. Nat Methods 21, "
              "531-540 (2024)")
_GEARS = ("Roohani Y, Huang K, Leskovec J. Predicting transcriptional outcomes of novel multigene perturbations "
          "with GEARS. Nat Biotechnol 42, 927-935 (2024)")
_NORMAN = ("Norman TM et al. Exploring genetic interaction manifolds constructed from rich single-cell phenotypes. "
           "Science 365, 786-793 (2019)")
_REPLOGLE = ("Replogle JM et al. Mapping information-rich genotype-phenotype landscapes with genome-scale "
             "Perturb-seq. Cell 185, 2559-2575 (2022)")
_NADIG = ("Nadig A et al. Transcriptome-wide analysis of differential expression in perturbation atlases. "
          "Nat Genet (2025)")
_CASCADE_NORMAN = "gao-lab/CASCADE data/download/Norman-2019/README.md"
_CASCADE_REPLOGLE = "gao-lab/CASCADE data/download/Replogle-2022/README.md"
_PERTPY = "scverse/pertpy pertpy/data/_datasets.py"
_GEARS_SRC = "snap-stanford/GEARS gears/pertdata.py (PertData.load)"
_SCPERTURB_13350497 = (
    "scPerturb's README (mirror gitee.com/jenazhao/scPerturb) names Zenodo record 13350497 for its RNA data, "
    "from which pertpy/data/_datasets.py downloads sci-Plex3; file name from sanderlab/scPerturb "
    "dataset_processing/notebooks/NadigOConner2024.ipynb"
)
_ZENODO_MD5_QUOTED = ("Zenodo record 13350497 file metadata, as quoted in public download scripts found by code "
                      "search (their repositories are not named by the index)")
_CC_BY = "CC BY 4.0 (scPerturb Zenodo record)"

# scPerturb's Replogle files label non-targeting guides either 'non-targeting' (authors' 'gene' column) or
# 'control' (scPerturb's convention); both are read as the control.
_SCPERTURB_REPLOGLE = Recipe(perturbation_key="perturbation", control="control",
                             rename=(("non-targeting", "control"),))
_GEARS_RECIPE = Recipe(perturbation_key="condition", control="ctrl", gene_symbols="gene_name",
                       member="perturb_processed.h5ad")
_GEARS_NOTE = ("GEARS' processed copy: X is log1p-normalised, obs['condition'] writes singles as 'A+ctrl' and the "
               "control as 'ctrl'; gene symbols are in var['gene_name'].")

_ENTRIES = [
    Dataset(
        name="norman_2019", title="Norman 2019 K562 CRISPRa, single and double activations (scPerturb)",
        contexts=("K562",), perturbation_type="CRISPRa, singles and pairs", citation=_NORMAN,
        doi="10.1126/science.aax4438", source="scPerturb (" + _SCPERTURB + ")", licence=_CC_BY,
        url="https://zenodo.org/records/10044268/files/NormanWeissman2019_filtered.h5ad",
        url_source=_CASCADE_NORMAN, filename="NormanWeissman2019_filtered.h5ad",
        known_hash="md5:c870e6967d91c017d9da827bab183cd6", hash_source=_CASCADE_NORMAN,
        recipe=Recipe(perturbation_key="perturbation", control="control", combination_sep="_",
                      context_label="K562"),
        notes="Raw counts; pairs written 'A_B' (scPerturb), read as sorted 'A+B'.",
    ),
    Dataset(
        name="norman_2019_gears", title="Norman 2019 K562 CRISPRa singles and pairs (GEARS' processed copy)",
        contexts=("K562",), perturbation_type="CRISPRa, singles and pairs", citation=_NORMAN,
        doi="10.1126/science.aax4438", source="GEARS (" + _GEARS + ")",
        url="https://dataverse.harvard.edu/api/access/datafile/6154020", url_source=_GEARS_SRC,
        filename="gears_norman.zip", recipe=dataclasses.replace(_GEARS_RECIPE, context_label="K562"),
        notes=_GEARS_NOTE,
    ),
    Dataset(
        name="adamson_2016", title="Adamson 2016 K562 CRISPRi UPR Perturb-seq (GEARS' processed copy)",
        contexts=("K562",), perturbation_type="CRISPRi",
        citation=("Adamson B et al. A multiplexed single-cell CRISPR screening platform enables systematic "
                  "dissection of the unfolded protein response. Cell 167, 1867-1882 (2016)"),
        doi="10.1016/j.cell.2016.11.048", source="GEARS (" + _GEARS + ")",
        url="https://dataverse.harvard.edu/api/access/datafile/6154417", url_source=_GEARS_SRC,
        filename="gears_adamson.zip", recipe=dataclasses.replace(_GEARS_RECIPE, context_label="K562"),
        notes=_GEARS_NOTE + " scPerturb's Adamson files label cells by guide identity without a documented "
        "control label, so they are not registered.",
    ),
    Dataset(
        name="replogle_2022_k562_essential", title="Replogle 2022 K562 essential-gene CRISPRi Perturb-seq (scPerturb)",
        contexts=("K562",), perturbation_type="CRISPRi knockdown", citation=_REPLOGLE,
        doi="10.1016/j.cell.2022.05.013", source="scPerturb (" + _SCPERTURB + ")", licence=_CC_BY,
        url="https://zenodo.org/record/10044268/files/ReplogleWeissman2022_K562_essential.h5ad?download=1",
        url_source=_PERTPY + " (replogle_2022_k562_essential)", filename="ReplogleWeissman2022_K562_essential.h5ad",
        known_hash="md5:d8cba17576d1a8afc0f7d71b79cad0f7", hash_source=_CASCADE_REPLOGLE,
        recipe=dataclasses.replace(_SCPERTURB_REPLOGLE, context_label="K562"),
        notes="Raw counts. pertpy issue #916 reports unexpected obs labels in this file (1,527 'nan', some "
        "guide-like strings): cells without a label are dropped (counted in uns['vclib']['dataset']).",
    ),
    Dataset(
        name="replogle_2022_rpe1_essential", title="Replogle 2022 RPE1 essential-gene CRISPRi Perturb-seq (scPerturb)",
        contexts=("RPE1",), perturbation_type="CRISPRi knockdown", citation=_REPLOGLE,
        doi="10.1016/j.cell.2022.05.013", source="scPerturb (" + _SCPERTURB + ")", licence=_CC_BY,
        url="https://zenodo.org/record/10044268/files/ReplogleWeissman2022_rpe1.h5ad?download=1",
        url_source=_PERTPY + " (replogle_2022_rpe1)", filename="ReplogleWeissman2022_rpe1.h5ad",
        known_hash="md5:cc7f1ec50aeb3a3e1b4a6cfa713d80fa", hash_source=_CASCADE_REPLOGLE,
        size_bytes=1_236_886_900, size_source=_ZENODO_MD5_QUOTED,
        recipe=dataclasses.replace(_SCPERTURB_REPLOGLE, context_label="RPE1"), notes="Raw counts.",
    ),
    Dataset(
        name="replogle_2022_essential", title="Replogle 2022 essential-gene CRISPRi in K562 and RPE1 (one AnnData)",
        contexts=("K562", "RPE1"), perturbation_type="CRISPRi knockdown", citation=_REPLOGLE,
        doi="10.1016/j.cell.2022.05.013", source="scPerturb (" + _SCPERTURB + ")", licence=_CC_BY,
        components=("replogle_2022_k562_essential", "replogle_2022_rpe1_essential"),
        notes="The same knockdowns in two cell lines: the two scPerturb files, genes measured in both.",
    ),
    Dataset(
        name="replogle_2022_k562_essential_gears", title="Replogle 2022 K562 essential CRISPRi (GEARS' filtered copy)",
        contexts=("K562",), perturbation_type="CRISPRi knockdown", citation=_REPLOGLE,
        doi="10.1016/j.cell.2022.05.013", source="GEARS (" + _GEARS + ")",
        url="https://dataverse.harvard.edu/api/access/datafile/7458695", url_source=_GEARS_SRC,
        filename="gears_replogle_k562_essential.zip",
        recipe=dataclasses.replace(_GEARS_RECIPE, context_label="K562"),
        notes=_GEARS_NOTE + " GEARS: 'not the complete dataset and has been filtered'.",
    ),
    Dataset(
        name="replogle_2022_rpe1_essential_gears", title="Replogle 2022 RPE1 essential CRISPRi (GEARS' filtered copy)",
        contexts=("RPE1",), perturbation_type="CRISPRi knockdown", citation=_REPLOGLE,
        doi="10.1016/j.cell.2022.05.013", source="GEARS (" + _GEARS + ")",
        url="https://dataverse.harvard.edu/api/access/datafile/7458694", url_source=_GEARS_SRC,
        filename="gears_replogle_rpe1_essential.zip",
        recipe=dataclasses.replace(_GEARS_RECIPE, context_label="RPE1"),
        notes=_GEARS_NOTE + " GEARS: 'not the complete dataset and has been filtered'.",
    ),
    Dataset(
        name="kang_2018", title="Kang 2018 IFN-beta stimulation of PBMC (pertpy's copy)",
        contexts=("PBMC cell types in obs['cell_type']",), perturbation_type="cytokine (IFN-beta, 6 h)",
        citation=("Kang HM et al. Multiplexed droplet single-cell RNA-sequencing using natural genetic "
                  "variation. Nat Biotechnol 36, 89-94 (2018)"),
        doi="10.1038/nbt.4042", source="pertpy (Heumos L et al., Nat Methods 2025)",
        url="https://figshare.com/ndownloader/files/34464122", url_source=_PERTPY + " (kang_2018)",
        filename="kang_2018.h5ad",
        recipe=Recipe(perturbation_key="label", context_key="cell_type", control="ctrl", counts_from=("counts",)),
        notes="obs['label'] is 'ctrl'/'stim'; donors are in obs['replicate'].",
    ),
    Dataset(
        name="srivatsan_2020_sciplex3", title="sci-Plex3: 188 compounds in A549, K562 and MCF7 (scPerturb), top dose",
        contexts=("A549", "K562", "MCF7"), perturbation_type="small molecules",
        citation=("Srivatsan SR et al. Massively multiplex chemical transcriptomics at single-cell resolution. "
                  "Science 367, 45-51 (2020)"),
        doi="10.1126/science.aax6234", source="scPerturb (" + _SCPERTURB + ")", licence=_CC_BY,
        url="https://zenodo.org/records/13350497/files/SrivatsanTrapnell2020_sciplex3.h5ad?download=1",
        url_source=_PERTPY + " (srivatsan_2020_sciplex3)", filename="SrivatsanTrapnell2020_sciplex3.h5ad",
        size_bytes=2_526_631_614, size_source="public download notes found by code search (repository not named)",
        recipe=Recipe(perturbation_key="perturbation", context_key="cell_line", control="control",
                      query="dose_value == 10000 or perturbation == 'control'",
                      rename=(("(+)-JQ1", "JQ1"), ("ENMD-2076 L-(+)-Tartaric acid", "ENMD-2076"))),
        notes="Raw counts. Only the highest dose (10 uM) and vehicle cells are kept, and two drug names that "
        "contain '+' are shortened, as PerturBench does (altoslabs/perturbench "
        "src/perturbench/data/accessors/srivatsan20.py); read the file with vc.loaders.read for other doses.",
    ),
    Dataset(
        name="mcfaline_figueroa_2023",
        title="McFaline-Figueroa 2023 sci-Plex-GxE: kinase CRISPRi x drugs in 3 GBM lines",
        contexts=("A172", "T98G", "U87MG"), perturbation_type="CRISPRi knockdown, drugs, and their combinations",
        citation=("McFaline-Figueroa JL et al. Multiplex single-cell chemical genomics reveals the kinase "
                  "dependence of the response to targeted therapy. Cell Genomics 4, 100487 (2024)"),
        doi="10.1016/j.xgen.2023.100487",
        source="PerturBench (Wu Y et al., PerturBench: Benchmarking machine learning models for cellular "
        "perturbation analysis, 2024)",
        url="https://huggingface.co/datasets/altoslabs/perturbench/resolve/main/mcfaline23_gxe_processed.h5ad.gz",
        url_source="altoslabs/perturbench src/perturbench/data/accessors/mcfaline23.py",
        filename="mcfaline23_gxe_processed.h5ad.gz",
        recipe=Recipe(perturbation_key="condition", context_key="cell_type", control="control",
                      also_perturbed_by=("treatment",), untreated=("none",)),
        notes="PerturBench's curation (notebooks/neurips2024/data_curation/curate_McFalineFigueroa23_step2.py): "
        "obs['condition'] is the knockdown ('control' for NTC/random guides), obs['treatment'] the drug ('none' "
        "for vehicle); vclib writes knockdown+drug as one combination, the drug alone as a single. X is log1p.",
    ),
    Dataset(
        name="neurips_2023_pbmc", title="NeurIPS 2023 / Open Problems: 144 compounds in PBMC from 3 donors",
        contexts=("T cells", "B cells", "NK cells", "Myeloid cells"), perturbation_type="small molecules",
        citation=("Szalata A et al. A benchmark for prediction of transcriptomic responses to chemical "
                  "perturbations across cell types. NeurIPS Datasets and Benchmarks (2024)"),
        doi="", source="Open Problems (openproblems-bio/task_perturbation_prediction)",
        url=("https://openproblems-bio.s3.amazonaws.com/public/neurips-2023-competition/"
             "sc_counts_reannotated_with_counts.h5ad"),
        url_source=("s3://openproblems-bio/public/neurips-2023-competition/sc_counts_reannotated_with_counts.h5ad"
                    " in openproblems-bio/task_perturbation_prediction scripts/create_resources/"
                    "neurips-2023-data.sh, fetched over the public bucket's HTTPS endpoint"),
        filename="sc_counts_reannotated_with_counts.h5ad",
        size_bytes=3_515_260_667, size_source="public download manifest found by code search (repository not named)",
        recipe=Recipe(perturbation_key="sm_name", context_key="cell_type", control="Dimethyl Sulfoxide",
                      counts_from=("raw", "counts")),
        notes="Raw counts are in .raw (task_perturbation_prediction src/process_dataset/compute_pseudobulk/"
        "script.py); the control compound is 'Dimethyl Sulfoxide' (src/process_dataset/run_limma/script.R). "
        "Donors are in obs['donor_id']; the task's own cell filters are not applied.",
    ),
    Dataset(
        name="nadig_2025_hepg2", title="Nadig 2025 HepG2 essential-gene CRISPRi Perturb-seq (scPerturb)",
        contexts=("HepG2",), perturbation_type="CRISPRi knockdown", citation=_NADIG,
        doi="10.1038/s41588-025-02169-3", source="scPerturb (" + _SCPERTURB + ")", licence=_CC_BY,
        url="https://zenodo.org/records/13350497/files/NadigOConner2024_hepg2.h5ad?download=1",
        url_source=_SCPERTURB_13350497, filename="NadigOConner2024_hepg2.h5ad",
        known_hash="md5:af2be47f7477cf32fa6e4bec1c6a4868", hash_source=_ZENODO_MD5_QUOTED,
        size_bytes=850_590_740, size_source=_ZENODO_MD5_QUOTED,
        recipe=dataclasses.replace(_SCPERTURB_REPLOGLE, context_label="HepG2"),
        notes="Raw counts; non-targeting guides relabelled 'control' by scPerturb.",
    ),
    Dataset(
        name="nadig_2025_jurkat", title="Nadig 2025 Jurkat essential-gene CRISPRi Perturb-seq (scPerturb)",
        contexts=("Jurkat",), perturbation_type="CRISPRi knockdown", citation=_NADIG,
        doi="10.1038/s41588-025-02169-3", source="scPerturb (" + _SCPERTURB + ")", licence=_CC_BY,
        url="https://zenodo.org/records/13350497/files/NadigOConner2024_jurkat.h5ad?download=1",
        url_source=_SCPERTURB_13350497, filename="NadigOConner2024_jurkat.h5ad",
        known_hash="md5:d8b05d00bfbd686d37ffdd4293bc6c8c", hash_source=_ZENODO_MD5_QUOTED,
        size_bytes=1_293_665_804, size_source=_ZENODO_MD5_QUOTED,
        recipe=dataclasses.replace(_SCPERTURB_REPLOGLE, context_label="Jurkat"),
        notes="Raw counts; non-targeting guides relabelled 'control' by scPerturb.",
    ),
    Dataset(
        name="nadig_2025", title="Nadig 2025 essential-gene CRISPRi in HepG2 and Jurkat (one AnnData)",
        contexts=("HepG2", "Jurkat"), perturbation_type="CRISPRi knockdown", citation=_NADIG,
        doi="10.1038/s41588-025-02169-3", source="scPerturb (" + _SCPERTURB + ")", licence=_CC_BY,
        components=("nadig_2025_hepg2", "nadig_2025_jurkat"),
        notes="The same knockdowns in two cell lines: the two scPerturb files, genes measured in both.",
    ),
]

REGISTRY: Mapping[str, Dataset] = MappingProxyType({d.name: d for d in _ENTRIES})
"""Every registered dataset by name (read-only)."""


def _entry(dataset: str | Dataset) -> Dataset:
    if isinstance(dataset, Dataset):
        return dataset
    if dataset not in REGISTRY:
        raise VclibInputError(
            f"no registered dataset {dataset!r}; registered: {', '.join(REGISTRY)}. "
            "vc.loaders.available() (or `vclib datasets list`) describes them."
        )
    return REGISTRY[dataset]


def cache_dir(path: str | Path | None = None) -> Path:
    """The folder where downloaded datasets are kept.

    Parameters
    ----------
    path
        Use this folder instead of the default.

    Returns
    -------
    ``path`` if given, else ``$VCLIB_DATA_DIR`` if set, else ``data/cache/`` of a writable source checkout,
    else the user cache folder (``pooch.os_cache("vclib")``). The folder is not created here.

    Examples
    --------
    >>> import vclib as vc
    >>> vc.loaders.cache_dir("/tmp/screens")
    PosixPath('/tmp/screens')
    """
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    data = Path(__file__).resolve().parents[2] / "data"
    if (data / "README.md").is_file() and os.access(data, os.W_OK):
        return data / "cache"
    return Path(pooch.os_cache("vclib"))


def _human(size: int | None) -> str:
    if size is None:
        return "unknown"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _cached(entry: Dataset, folder: Path) -> bool:
    if entry.components:
        return all(_cached(REGISTRY[c], folder) for c in entry.components)
    return (folder / entry.filename).is_file()


def available(*, cache_dir: str | Path | None = None) -> pd.DataFrame:
    """The registered public datasets, with what is already in the cache.

    Parameters
    ----------
    cache_dir
        Cache folder to look in (default: :func:`cache_dir`).

    Returns
    -------
    DataFrame with one row per dataset: ``name``, ``title``, ``contexts``, ``perturbation_type``, ``source``,
    ``size``, ``checksum`` (``md5:...`` or ``none published``), ``url``, ``url_source``, ``citation``,
    ``licence`` and ``cached`` (the downloaded file is in the cache folder).

    Examples
    --------
    >>> import vclib as vc
    >>> table = vc.loaders.available()
    >>> "replogle_2022_k562_essential" in set(table["name"])
    True
    >>> table.set_index("name").loc["replogle_2022_essential", "contexts"]
    'K562, RPE1'
    """
    folder = _resolve(cache_dir)
    rows = []
    for entry in REGISTRY.values():
        parts = [REGISTRY[c] for c in entry.components] or [entry]
        sizes = [p.size_bytes for p in parts]
        rows.append({
            "name": entry.name, "title": entry.title, "contexts": ", ".join(entry.contexts),
            "perturbation_type": entry.perturbation_type, "source": entry.source.split(" (")[0],
            "size": _human(sum(sizes)) if None not in sizes else "unknown",
            "checksum": "; ".join(p.known_hash or "none published" for p in parts),
            "url": "; ".join(p.url for p in parts), "url_source": "; ".join(p.url_source for p in parts),
            "citation": entry.citation, "licence": entry.licence, "cached": _cached(entry, folder),
        })
    return pd.DataFrame(rows)


def _resolve(folder: str | Path | None) -> Path:
    return cache_dir(folder)


def _manual_hint(entry: Dataset, folder: Path) -> str:
    checked = (f"vclib checks its {entry.known_hash.split(':')[0]} ({entry.known_hash.split(':')[1]}) and uses it"
               if entry.known_hash else "vclib checks that it opens (no checksum is published) and uses it")
    return (f"To use a copy downloaded by other means (browser, wget, another machine), save it as "
            f"{entry.filename!r} in {folder} (i.e. {folder / entry.filename}), or point ${ENV_VAR} to the folder "
            f"that holds it; {checked} without downloading.")


class _Unpack:
    """pooch processor: unpack the h5ad of a zip or gzip download to a temporary name, then rename it."""

    def __init__(self, entry: Dataset):
        self.entry = entry

    def __call__(self, fname: str, action: str, pup) -> str:
        archive = Path(fname)
        target = archive.parent / self.entry.h5ad_name
        if target.is_file() and action == "fetch":
            return str(target)
        with tempfile.NamedTemporaryFile(dir=archive.parent, suffix=".part", delete=False) as out:
            tmp = Path(out.name)
            try:
                if archive.suffix == ".zip":
                    with zipfile.ZipFile(archive) as zf:
                        member = _zip_member(zf, self.entry)
                        with zf.open(member) as src:
                            shutil.copyfileobj(src, out)
                else:
                    with gzip.open(archive) as src:
                        shutil.copyfileobj(src, out)
            except BaseException:
                out.close()
                tmp.unlink(missing_ok=True)
                raise
        os.replace(tmp, target)
        return str(target)


def _zip_member(zf: zipfile.ZipFile, entry: Dataset) -> str:
    wanted = entry.recipe.member
    matches = [n for n in zf.namelist() if Path(n).name == wanted]
    if not matches:
        raise DownloadError(
            f"the archive {entry.filename!r} of dataset {entry.name!r} holds no {wanted!r} (it holds: "
            f"{', '.join(zf.namelist()[:10])}). Remove it from the cache and download it again."
        )
    return matches[0]


def _wrong_size(path: Path, size: int | None) -> str | None:
    """Why a download is not the size its source states, or None."""
    found = path.stat().st_size
    return f"is {found} bytes, the source states {size}" if size is not None and found != size else None


def _unreadable(path: Path) -> str | None:
    """Why a file does not open as the h5ad, zip or gzip its name says it is, or None."""
    kind = "zip" if path.name.endswith(".zip") else "gz" if path.name.endswith(".gz") else "h5ad"
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
            if bad is not None:
                return f"is not a complete zip (its member {bad!r} is corrupt)"
        elif kind == "gz":
            with gzip.open(path) as stream:
                while stream.read(1 << 24):
                    pass
        else:
            with h5py.File(path, "r") as f:
                f.visit(lambda name: None)  # reads every group and dataset header
            ad.read_h5ad(path, backed="r").file.close()
    except Exception as err:  # h5py, zipfile, gzip and zlib raise many types for a cut file
        return f"is not a complete {kind} ({type(err).__name__}: {err})"
    return None


class _Unusable(Exception):
    """A cached file that failed verification; the message says why."""


def _verified_cache(entry: Dataset, path: Path, processor) -> Path:
    """The h5ad of the cached download ``path``, unpacked if needed and verified, without network access.

    Without a checksum the h5ad is opened (cheap); its size is not checked, so a manual copy still works if
    a source's stated size is wrong. Raises ``_Unusable``. A file whose checksum does not match is left for
    the user to inspect; an archive that cannot be unpacked, or a file without checksum that does not open,
    is deleted with what was unpacked from it.
    """
    if entry.known_hash:
        algorithm, expected = entry.known_hash.split(":")
        found = pooch.file_hash(str(path), alg=algorithm)
        if found != expected:
            raise _Unusable(f"does not match the published checksum ({algorithm} {found}, not the published "
                            f"{expected}): it is incomplete or another file")
    try:
        out = Path(processor(str(path), "fetch", None)) if processor is not None else path
    except DownloadError:
        raise
    except Exception as err:  # a cut zip or gz: zipfile, gzip and zlib errors
        problem = f"cannot be unpacked ({type(err).__name__}: {err})"
    else:
        problem = None if entry.known_hash else _unreadable(out)
    if problem is not None:
        for stale in (path, path.parent / entry.h5ad_name):
            stale.unlink(missing_ok=True)
        raise _Unusable(problem + ", so it was deleted")
    return out


def _cached_only(entry: Dataset, folder: Path, processor) -> Path:
    """The cached h5ad of an entry, verified, without any network access."""
    path = folder / entry.filename
    if not path.is_file():
        raise DownloadError(f"dataset {entry.name!r} is not in the cache ({path} does not exist). Download it "
                            f"with `vclib datasets get {entry.name}` or vc.loaders.fetch({entry.name!r}), or get "
                            f"it from {entry.url}. " + _manual_hint(entry, folder))
    try:
        return _verified_cache(entry, path, processor)
    except _Unusable as err:
        advice = "Delete it and fetch" if path.exists() else "Fetch"
        raise DownloadError(f"the cached file {path} of dataset {entry.name!r} {err}. {advice} {entry.name!r} "
                            f"again (`vclib datasets get {entry.name}`). " + _manual_hint(entry, folder)) from None


def _download(entry: Dataset, folder: Path, *, progressbar: bool, note: str = "") -> None:
    """Download an entry's file into ``folder``: staged, verified, then moved to its name; ``note`` explains
    why (a cached file that failed)."""
    folder.mkdir(parents=True, exist_ok=True)
    url = source_url(entry)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".partial-") as staging:
        try:
            staged = Path(pooch.retrieve(url, entry.known_hash, fname=entry.filename, path=staging,
                                         progressbar=progressbar))
        except ValueError as err:  # pooch's checksum mismatch; the download was deleted
            if "hash" not in str(err):
                raise
            raise DownloadError(
                f"the file downloaded from {url} for dataset {entry.name!r} does not match its published "
                f"checksum ({err}). Nothing was kept in the cache. Try again later; if it persists the source "
                f"changed the file: report it. " + _manual_hint(entry, folder)
            ) from None
        except Exception as err:  # requests' connection/HTTP/incomplete-read errors, OS errors
            raise DownloadError(
                f"could not download dataset {entry.name!r} from {url} ({type(err).__name__}: {err}). "
                f"Nothing was kept in the cache.{note} " + _manual_hint(entry, folder)
            ) from None
        problem = None if entry.known_hash else _wrong_size(staged, entry.size_bytes) or _unreadable(staged)
        if problem is not None:
            raise DownloadError(
                f"the file downloaded from {url} for dataset {entry.name!r} {problem}: the download was cut "
                f"short or is another file. Nothing was kept in the cache.{note} Try again; if it persists, "
                "download it by other means. " + _manual_hint(entry, folder)
            )
        os.replace(staged, folder / entry.filename)


def fetch(dataset: str | Dataset, *, cache_dir: str | Path | None = None, progressbar: bool = True,
          download: bool = True) -> list[Path]:
    """Download a registered dataset into the cache (if needed), verify it, and return its h5ad file(s).

    The download shows a progress bar and lands in the cache only when complete and verified: against the
    published checksum when there is one, else by size where the source states one and by opening it (h5ad,
    zip or gzip). A response shorter than its Content-Length fails. A file already in the cache is reused
    after a check (its checksum, or for a file without one opening the h5ad); if that fails, a file without checksum
    (or an archive that cannot be unpacked) is deleted, and the file is downloaded again once.

    Parameters
    ----------
    dataset
        Registry name (see :func:`available`) or a :class:`Dataset`.
    cache_dir
        Cache folder (default: :func:`cache_dir`).
    progressbar
        Show a progress bar on stderr while downloading.
    download
        If False, only use the cache and fail if the file is not there (or fails its check).

    Returns
    -------
    Paths of the h5ad files: one, or one per part for a dataset made of several files.

    Raises
    ------
    DownloadError
        When the download fails, is cut short, the checksum or size does not match, the file does not open,
        or (``download=False``) the file is not cached. The message names the URL, what failed, the expected
        file name and where to place a manually downloaded copy.
    """
    entry = _entry(dataset)
    if entry.components:
        return [p for c in entry.components
                for p in fetch(REGISTRY[c], cache_dir=cache_dir, progressbar=progressbar, download=download)]
    folder = _resolve(cache_dir)
    path = folder / entry.filename
    processor = _Unpack(entry) if entry.h5ad_name != entry.filename else None
    if not download:
        return [_cached_only(entry, folder, processor)]
    note = ""
    if path.is_file():
        try:
            return [_verified_cache(entry, path, processor)]
        except _Unusable as err:
            note = f" The file already at {path} {err}; vclib tried to download it again."
    _download(entry, folder, progressbar=progressbar, note=note)
    if processor is None:
        return [path]
    try:
        return [Path(processor(str(path), "download", None))]
    except DownloadError:
        raise
    except Exception as err:
        path.unlink(missing_ok=True)  # nothing half-usable stays in the cache
        raise DownloadError(f"could not unpack {path} of dataset {entry.name!r} ({type(err).__name__}: {err}); it "
                            "was deleted. Fetch it again. " + _manual_hint(entry, folder)) from None


def _missing(labels: pd.Series) -> np.ndarray:
    return (labels.isna() | labels.astype(str).str.strip().isin(MISSING_LABELS)).to_numpy()


def _expression(adata: ad.AnnData, recipe: Recipe) -> tuple[ad.AnnData, str]:
    """Put the raw counts in X when the recipe says where they are; return the AnnData and where X came from."""
    for where in recipe.counts_from:
        if where == "raw" and adata.raw is not None:
            raw = adata.raw
            return ad.AnnData(X=raw.X, obs=adata.obs, var=raw.var.copy(), uns=adata.uns), "raw"
        if where in adata.layers:
            adata.X = adata.layers[where]
            return adata, f"layers[{where!r}]"
    return adata, "X"


def _harmonise(adata: ad.AnnData, entry: Dataset) -> ad.AnnData:
    """Apply an entry's recipe to an AnnData this module owns (it may be modified), then read() it."""
    recipe = entry.recipe
    adata, matrix = _expression(adata, recipe)
    if recipe.gene_symbols is not None and recipe.gene_symbols in adata.var.columns:
        adata.var_names = pd.Index(adata.var[recipe.gene_symbols].astype(str).to_numpy())
    duplicated = int(adata.var_names.duplicated().sum())
    if duplicated:
        adata.var_names_make_unique()
    obs = adata.obs
    for key in [recipe.perturbation_key, recipe.context_key, *recipe.also_perturbed_by]:
        if key is not None and key not in obs.columns:
            raise VclibInputError(
                f"dataset {entry.name!r}: obs has no column {key!r} (columns: {', '.join(map(repr, obs.columns))})."
                " The file does not have the layout this recipe expects; has the source changed it?"
            )
    original = obs[recipe.perturbation_key].to_numpy()
    unlabelled = _missing(obs[recipe.perturbation_key])
    labels = obs[recipe.perturbation_key].astype(str).replace(dict(recipe.rename)).to_numpy(dtype=object)
    if recipe.combination_sep != COMBINATION_SEP:
        labels = np.array([x.replace(COMBINATION_SEP, "plus") for x in labels], dtype=object)
    for column in recipe.also_perturbed_by:
        unlabelled |= _missing(obs[column])
        extra = obs[column].astype(str).to_numpy(dtype=object)
        given = ~np.isin(extra, recipe.untreated)
        labels = np.where(given, labels + recipe.combination_sep + extra, labels)
    if recipe.context_key is not None:
        unlabelled |= _missing(obs[recipe.context_key])
    selected = np.ones(adata.n_obs, dtype=bool)
    if recipe.query is not None:
        selected = obs.eval(recipe.query).to_numpy(dtype=bool)
    keep = selected & ~unlabelled
    if not keep.all():
        adata = adata[keep].copy()
    obs = adata.obs
    obs["perturbation_original"] = original[keep]
    obs[PERTURBATION_KEY] = labels[keep]
    context_key = recipe.context_key
    if recipe.context_label is not None:
        obs[CONTEXT_KEY], context_key = recipe.context_label, CONTEXT_KEY
    out = read(adata, perturbation_key=PERTURBATION_KEY, context_key=context_key, control=recipe.control,
               combination_sep=recipe.combination_sep, values=recipe.values)
    out.uns["vclib"]["source"] = entry.name
    out.uns["vclib"]["dataset"] = {
        "name": entry.name, "url": entry.url or "", "url_source": entry.url_source,
        "checksum": entry.known_hash or "", "matrix": matrix, "query": recipe.query or "",
        "cells_not_selected": int((~selected).sum()), "cells_dropped_unlabelled": int((unlabelled & selected).sum()),
        "duplicated_genes_renamed": duplicated, "citation": entry.citation,
    }
    return out


def harmonise(adata: ad.AnnData, dataset: str | Dataset) -> ad.AnnData:
    """Map an AnnData in a registered source's own layout into the data contract, with that entry's recipe.

    Use it on a file you downloaded or subset yourself. The input is not modified.

    Parameters
    ----------
    adata
        Cells in the layout of the source (e.g. GEARS' ``perturb_processed.h5ad``, an scPerturb file).
    dataset
        Registry name or :class:`Dataset` whose recipe applies.

    Returns
    -------
    AnnData in the data contract (see :func:`vclib.loaders.read`); ``obs["perturbation_original"]`` keeps the
    source's label and ``uns["vclib"]["dataset"]`` records the entry, URL and what the recipe did.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> import vclib as vc
    >>> counts = np.random.default_rng(0).poisson(3, size=(6, 4)).astype(np.float32)
    >>> conditions = ["ctrl", "ctrl", "KLF1+ctrl", "KLF1+ctrl", "KLF1+MAP2K6", "ctrl"]
    >>> obs = pd.DataFrame({"condition": conditions}, index=[f"cell{i}" for i in range(6)])
    >>> gears = ad.AnnData(counts, obs=obs)
    >>> gears.var["gene_name"] = ["KLF1", "MAP2K6", "GATA1", "HBG1"]
    >>> out = vc.loaders.harmonise(gears, "norman_2019_gears")
    >>> sorted(out.obs["perturbation"].unique())
    ['KLF1', 'KLF1+MAP2K6', 'control']
    """
    entry = _entry(dataset)
    if entry.components:
        raise VclibInputError(f"{entry.name!r} combines {', '.join(entry.components)}; harmonise each of them.")
    with warnings.catch_warnings():  # duplicated gene names are expected here: the recipe renames them
        warnings.filterwarnings("ignore", "Variable names are not unique", UserWarning)
        source = adata.copy()
    return _harmonise(source, entry)


def load_registered(dataset: str | Dataset, *, cache_dir: str | Path | None = None, download: bool = True,
                    progressbar: bool = True) -> ad.AnnData:
    """Fetch a registered dataset (see :func:`fetch`) and return it in the data contract, validated.

    Parameters
    ----------
    dataset
        Registry name or :class:`Dataset`.
    cache_dir, download, progressbar
        As in :func:`fetch`.

    Returns
    -------
    AnnData in the data contract. A dataset made of several files (the same perturbations in several cell
    lines) is one AnnData with one context per file, restricted to the genes measured in all of them.
    """
    entry = _entry(dataset)
    if entry.components:
        parts = [load_registered(REGISTRY[c], cache_dir=cache_dir, download=download, progressbar=progressbar)
                 for c in entry.components]
        info = {**parts[0].uns["vclib"], "source": entry.name,
                "dataset": {"name": entry.name, "components": [p.uns["vclib"]["dataset"] for p in parts]}}
        for part in parts:
            part.uns = {}
        out = ad.concat(parts, join="inner", merge="same")
        out.obs_names_make_unique()
        for key in (PERTURBATION_KEY, CONTEXT_KEY):
            out.obs[key] = out.obs[key].astype(str).astype("category")
        out.uns["vclib"] = info
        validate(out)
        return out
    (path,) = fetch(entry, cache_dir=cache_dir, progressbar=progressbar, download=download)
    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # h5py raises many types for unreadable files
        raise DownloadError(f"cannot read {path} ({type(err).__name__}: {err}); delete it and fetch "
                            f"{entry.name!r} again.") from err
    return _harmonise(adata, entry)
