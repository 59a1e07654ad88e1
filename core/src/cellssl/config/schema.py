"""Dataclasses of the run-level config sections (those that are not plugin blocks)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cellssl.data.normalize_config import NormalizeConfig

PRECISIONS = ("bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
BF16_MODES = ("auto", "cast", "autocast")  # embed.bf16; see cellssl.embed.fast


@dataclass
class RunSection:
    """``run:`` — where outputs go and how the process behaves.

    :ivar output_dir: run directory (config, checkpoints, embeddings, eval results); default
        ``runs/<config file stem>``.
    :ivar seed: global seed.
    :ivar device: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``.
    :ivar num_threads: CPU threads for torch (``None``: torch's default).
    :ivar stages: stages ``cellssl run`` executes, in order; default: ``train`` when an ``objective`` is
        configured, ``finetune`` when a ``finetune`` section is, ``embed``, and ``eval`` when ``eval``
        evaluators are listed.
    """

    output_dir: str | None = None
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None
    stages: list[str] | None = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.stages is not None:
            unknown = [s for s in self.stages if s not in STAGES]
            if unknown:
                raise ValueError(f"unknown stages {unknown}; stages are {STAGES}")


STAGES = ("train", "finetune", "embed", "eval")


@dataclass
class NormalizeSection(NormalizeConfig):
    """``normalize:`` — pixel normalisation shared by training and embedding (one place, so the two match).

    ``mode`` is ``dataset`` by default: per-channel statistics over the dataset keep absolute intensity,
    which per-image standardisation erases (on the Jurkat cell-cycle images, kNN macro F1 of intensity
    features: 0.83-0.87 with ``dataset`` or ``scale`` vs 0.59 with ``per_image``). The statistics come
    from ``stats_path``, else the run directory's ``channel_stats.json``, else they are computed on
    ``stats_samples`` images and stored there (training stores them, so embedding reuses them).
    """

    mode: str = "dataset"
    stats_samples: int = 2000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stats_samples < 1:
            raise ValueError(f"normalize.stats_samples must be >= 1, got {self.stats_samples}")


@dataclass
class FeaturesSection:
    """``embed.features:`` — which backbone features make the embedding (DINOv2 linear-probe variants).

    :ivar n_last_blocks: concatenate the CLS tokens of the last ``n`` blocks (ViT only when > 1).
    :ivar avgpool: append the mean patch token of the last block (ViT only).
    """

    n_last_blocks: int = 1
    avgpool: bool = False

    def __post_init__(self) -> None:
        if self.n_last_blocks < 1:
            raise ValueError(f"features.n_last_blocks must be >= 1, got {self.n_last_blocks}")


@dataclass
class EmbedSection:
    """``embed:`` — how embeddings are computed and written.

    :ivar img_size: images are resized to this square size before the backbone (``None``: keep size;
        then every image of the dataset must have the same size).
    :ivar batch_size: images per forward pass.
    :ivar num_workers: DataLoader worker processes.
    :ivar precision: ``bf16`` or ``fp32``. bf16 is fastest where the hardware has native bf16 (CUDA, CPUs with
        AVX512-BF16 or AMX); on an AVX2-only CPU ``cast`` runs at about 0.75x fp32 (its matmuls use fp32 units) and
        ``autocast`` 3-10x slower than fp32 (a warning says so).
    :ivar bf16: how ``precision: bf16`` runs: ``cast`` (the weights are cast to bf16 once and inputs cast; no
        per-call casts; on CPUs without native bf16 the matmuls multiply the bf16 operands in fp32), ``autocast``
        (fp32 weights under ``torch.autocast``) or ``auto`` (``cast``, the faster mode on every device measured;
        see :mod:`cellssl.embed.fast`). The two give slightly different numbers, so the mode used is part of the
        embedding fingerprint.
    :ivar compile: run the backbone through ``torch.compile`` (inductor; needs a C++ compiler on CPU, else the
        backbone runs eager with a warning). Each new batch shape compiles once (tens of seconds on a CPU).
    :ivar shard_rows: rows per Parquet shard (bounds memory).
    :ivar limit: embed only the first ``limit`` samples (``None``: all).
    :ivar features: backbone features per image (see :class:`FeaturesSection`).
    """

    img_size: int | None = None
    batch_size: int = 64
    num_workers: int = 0
    precision: str = "bf16"
    bf16: str = "auto"
    compile: bool = False
    shard_rows: int = 50_000
    limit: int | None = None
    features: FeaturesSection = field(default_factory=FeaturesSection)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.bf16 not in BF16_MODES:
            raise ValueError(f"embed.bf16 must be one of {', '.join(BF16_MODES)} (how precision bf16 runs), "
                             f"got {self.bf16!r}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
