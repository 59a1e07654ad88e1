"""Parameters of the ``jump_sites`` and ``jump_cells`` datasets and of the ``jump_map`` evaluator.

Import-light (standard library only): the entry point imports this module to register the names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

JUMP_CHANNELS: tuple[str, ...] = ("DNA", "ER", "RNA", "AGP", "Mito")
BRIGHTFIELD_CHANNELS: tuple[str, ...] = ("Brightfield", "HighZBF", "LowZBF")
NORMALIZATIONS = ("none", "standardize", "mad_robustize", "spherize")
AGGREGATIONS = ("mean", "median")
CHECK_FILES = ("exists", "none")


@dataclass
class JumpMetadataConfig:
    """Where the perturbation of every well comes from (the ``metadata:`` block of a JUMP dataset).

    :ivar tables: folder holding the JUMP metadata tables (jump-cellpainting/datasets ``metadata/``):
        ``well.csv.gz`` (required there), ``plate.csv.gz``, ``compound.csv.gz``, ``orf.csv.gz``,
        ``crispr.csv.gz``, ``perturbation_control.csv`` (each optional). Relative to ``root``.
    :ivar platemaps: folder of per-batch plate maps (``workspace/metadata/platemaps``:
        ``<batch>/barcode_platemap.csv`` + ``<batch>/platemap/<Plate_Map_Name>.txt``). Relative to ``root``.
    :ivar negcon: JCP2022 ids marked ``negcon`` when no ``perturbation_control.csv`` says otherwise.
    :ivar require: fail when a well of the load_data tables has no perturbation (else a warning).
    """

    tables: str = ""
    platemaps: str = ""
    negcon: list[str] = field(default_factory=lambda: ["JCP2022_033924"])
    require: bool = False


@dataclass
class JumpSitesConfig:
    """Parameters of the ``jump_sites`` dataset: one sample per site (or per tile of a site).

    :ivar root: the source folder (``cpg0016-jump/<source>``: holds ``images/`` and ``workspace/``). Required.
    :ivar load_data: load_data tables (CSV, CSV.gz or Parquet; glob patterns allowed), relative to ``root``;
        default: ``workspace/load_data_csv/*/*/load_data_with_illum.*`` when ``illum`` is on, else
        ``workspace/load_data_csv/*/*/load_data.*``.
    :ivar batches: keep only these ``Metadata_Batch`` values (empty: all).
    :ivar plates: keep only these ``Metadata_Plate`` values, compared as text (empty: all).
    :ivar channels: JUMP channel names (the ``<Ch>`` of ``FileName_Orig<Ch>``), in sample order; empty:
        DNA, ER, RNA, AGP, Mito and every brightfield plane the table has.
    :ivar path_map: prefix -> local prefix; rewrites ``PathName_*`` values (cluster paths, ``s3://`` URLs).
        The longest matching prefix wins.
    :ivar rebase: after ``path_map``, move every path containing ``images/<Metadata_Batch>/`` under ``root`` from
        that segment on (``/any/prefix/images/<batch>/images/<plate>`` -> ``<root>/images/<batch>/images/<plate>``):
        a plate synced from cpg0016 with its layout kept needs no ``path_map``.
    :ivar illum: divide every channel by its illumination function ``<Plate>_Illum<Ch>.npy``.
    :ivar illum_dir: folder of the illumination functions, ``{plate}`` and ``{batch}`` substituted; default:
        the ``PathName_Illum<Ch>`` column, else ``images/{batch}/illum/{plate}`` under ``root``.
    :ivar bit_depth: pixel range of the TIFFs (``uint16`` for JUMP; ``dtype`` reads it from the file).
    :ivar tile_size: cut each site into square tiles of this size (``None``: whole sites).
    :ivar tile_stride: step between tiles (default: ``tile_size``, no overlap).
    :ivar metadata: perturbation metadata joins (:class:`JumpMetadataConfig`).
    :ivar check_files: ``exists`` (every image and illumination file must exist) or ``none``.
    :ivar limit: keep only the first ``limit`` sites (after sorting by plate, well and site).
    """

    root: str
    load_data: list[str] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)
    plates: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    path_map: dict[str, str] = field(default_factory=dict)
    rebase: bool = False
    illum: bool = True
    illum_dir: str = ""
    bit_depth: str = "uint16"
    tile_size: int | None = None
    tile_stride: int | None = None
    metadata: JumpMetadataConfig = field(default_factory=JumpMetadataConfig)
    check_files: str = "exists"
    limit: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.metadata, dict):
            self.metadata = JumpMetadataConfig(**self.metadata)
        if self.check_files not in CHECK_FILES:
            raise ValueError(f"check_files must be one of {CHECK_FILES}, got {self.check_files!r}")
        for name in ("tile_size", "tile_stride", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer or null, got {value}")
        if self.tile_stride is not None and self.tile_size is None:
            raise ValueError("tile_stride needs tile_size")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels names a channel twice: {self.channels}")


@dataclass
class JumpCellsConfig(JumpSitesConfig):
    """Parameters of the ``jump_cells`` dataset: single-cell crops centred on nuclei (see :class:`JumpSitesConfig`
    for the inherited keys; ``tile_size`` / ``tile_stride`` are not used).

    :ivar crop_size: side of the square crop, in pixels of the site.
    :ivar locations: nucleus centres: CSV / Parquet tables (glob allowed, relative to ``root``) with
        ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site`` and the ``x_column`` / ``y_column``; empty:
        segment the DNA channel.
    :ivar x_column: column of the x (column) coordinate of a centre, in pixels.
    :ivar y_column: column of the y (row) coordinate.
    :ivar segment_channel: channel segmented when no ``locations`` are given.
    :ivar min_area: smallest nucleus kept by the segmentation, in pixels.
    :ivar smoothing: Gaussian sigma applied before the Otsu threshold (0: none).
    :ivar min_distance: smallest distance between two watershed seeds (splits touching nuclei).
    :ivar max_cells_per_site: keep at most this many cells per site (the first in row-major order of
        their centres); ``None``: all.
    :ivar nuclei_cache: folder where segmented nucleus centres are stored per plate and reused when the dataset
        is built again (:mod:`cellssl_jumpcp.nuclei_cache`); empty: segment at every build.
    """

    crop_size: int = 96
    locations: list[str] = field(default_factory=list)
    x_column: str = "Location_Center_X"
    y_column: str = "Location_Center_Y"
    segment_channel: str = "DNA"
    min_area: int = 50
    smoothing: float = 1.0
    min_distance: int = 7
    max_cells_per_site: int | None = None
    nuclei_cache: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.crop_size < 2:
            raise ValueError(f"crop_size must be >= 2, got {self.crop_size}")
        if self.min_area < 1 or self.min_distance < 1:
            raise ValueError("min_area and min_distance must be >= 1")
        if self.smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {self.smoothing}")
        if self.max_cells_per_site is not None and self.max_cells_per_site < 1:
            raise ValueError(f"max_cells_per_site must be >= 1 or null, got {self.max_cells_per_site}")


@dataclass
class JumpMapConfig:
    """Parameters of the ``jump_map`` evaluator (cells -> well profiles -> mAP; see :mod:`cellssl_jumpcp.evaluator`).

    :ivar plate_column: plate of a row. :ivar well_column: well of a row.
    :ivar perturbation_column: positives share this value (the JUMP perturbation id).
    :ivar control_column: column whose ``negcon_values`` mark negative-control wells.
    :ivar negcon_values: values of ``control_column`` marking negative controls.
    :ivar aggregate: ``mean`` or ``median`` of the cells of a well (pycytominer ``aggregate``).
    :ivar site_column: when set (e.g. ``Metadata_Site``), aggregate cells -> site -> well, each level with
        ``aggregate``, so every site of a well weighs the same; empty: cells -> well directly.
    :ivar normalize: ``none``, ``standardize``, ``mad_robustize`` or ``spherize``, fitted per plate on the
        negative-control wells (pycytominer ``normalize(samples=...)``).
    :ivar epsilon: added to scales (and to covariance eigenvalues of ``spherize``).
    :ivar neg_sameby: columns a negative control must share with its query (e.g. ``[Metadata_Plate]``);
        empty: controls of every plate.
    :ivar target_column: annotation shared by perturbations with the same target / MoA; when set,
        phenotypic consistency is scored too (consensus profiles: median over a perturbation's wells).
    :ivar distance: ``cosine``, ``correlation`` or ``euclidean``.
    :ivar null_size: random rankings per null distribution. :ivar threshold: significance of q-values.
    :ivar seed: seed of the null distributions.
    :ivar intensity_baseline: also score per-channel intensity statistics of the same cells (needs the
        run's dataset; one more pass over the images).
    :ivar embeddings: folder of cell embeddings streamed plate by plate (relative to the run directory);
        empty: the table the runner passes.
    """

    plate_column: str = "Metadata_Plate"
    well_column: str = "Metadata_Well"
    perturbation_column: str = "Metadata_JCP2022"
    control_column: str = "Metadata_pert_type"
    negcon_values: list[str] = field(default_factory=lambda: ["negcon"])
    aggregate: str = "median"
    site_column: str = ""
    normalize: str = "mad_robustize"
    epsilon: float = 1e-6
    neg_sameby: list[str] = field(default_factory=list)
    target_column: str = ""
    distance: str = "cosine"
    null_size: int = 10000
    threshold: float = 0.05
    seed: int = 0
    intensity_baseline: bool = False
    embeddings: str = "embeddings"

    def __post_init__(self) -> None:
        if self.aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {self.aggregate!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        if not self.negcon_values:
            raise ValueError("negcon_values must name at least one value (e.g. [negcon])")
        if self.null_size < 1:
            raise ValueError(f"null_size must be >= 1, got {self.null_size}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not self.epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {self.epsilon}")
