"""The ``train:`` section of a run config: :class:`TrainSection`.

Schedules follow DINO / DINOv2 (Caron et al. 2021; Oquab et al. 2023): the peak learning rate is
``lr`` scaled by the batch size (``lr_scaling``: ``sqrt`` as DINOv2 with reference 1024, ``linear`` as DINO
with reference 256, or ``none``), reached after ``warmup_epochs`` and decayed by a cosine to ``min_lr``.
Epoch-valued lengths may be fractional (they are converted to steps).

The run's length is ``epochs`` (an epoch is one pass over the training samples, or ``epoch_length``
samples), or ``max_steps`` when set; schedules span that length. ``max_minutes`` stops a run early
(checkpointed; ``--resume`` continues it).

uniDINO-style mixing: ``extra_datasets`` lists more dataset blocks with sampling weights; every sample
of an epoch picks its dataset with probability proportional to the weights (``data_weight`` for the
run's ``data:``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cellssl.config.schema import PRECISIONS

LR_SCALINGS = ("sqrt", "linear", "none")


@dataclass
class DatasetMixEntry:
    """One entry of ``train.extra_datasets``: a dataset block (``{name: ..., ...}``) and its weight."""

    data: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0

    def __post_init__(self) -> None:
        if "name" not in self.data:
            raise ValueError("every train.extra_datasets entry needs `data: {name: <dataset>, ...}`")
        if not self.weight > 0:
            raise ValueError(f"extra dataset weights must be > 0, got {self.weight}")


@dataclass
class CollapseConfig:
    """``train.collapse``: when the collapse monitor warns.

    :ivar uniform_threshold: mean teacher entropy / log K above this means a uniform teacher output.
    :ivar onehot_threshold: entropy of the batch-mean teacher output / log K below this means every
        image goes to the same prototype.
    :ivar patience: consecutive steps in such a state before the warning.
    """

    uniform_threshold: float = 0.98
    onehot_threshold: float = 0.05
    patience: int = 20

    def __post_init__(self) -> None:
        if not 0 < self.onehot_threshold < self.uniform_threshold <= 1:
            raise ValueError("collapse thresholds need 0 < onehot_threshold < uniform_threshold <= 1, got "
                             f"{self.onehot_threshold} and {self.uniform_threshold}")
        if self.patience < 1:
            raise ValueError(f"collapse.patience must be >= 1, got {self.patience}")


DISTRIBUTED_STRATEGIES = ("ddp", "fsdp")
DISTRIBUTED_BACKENDS = ("auto", "nccl", "gloo")


@dataclass
class DistributedConfig:
    """``train.distributed``: how training runs on several processes (``torchrun``, SLURM through submitit).

    Used only when the process is started with ``WORLD_SIZE > 1`` in its environment; a single process
    ignores it. ``train.batch_size`` is then the global batch: each of the ``W`` processes gets
    ``batch_size / W`` samples of every step (the run's results do not depend on ``W``).

    :ivar strategy: ``ddp`` (each process holds the whole model; gradients all-reduced) or ``fsdp`` (FSDP2
        ``fully_shard``: parameters, gradients and optimizer state sharded per transformer block; student
        and teacher sharded alike, so the EMA runs on the local shards).
    :ivar backend: ``auto`` (``nccl`` on CUDA, ``gloo`` on CPU), ``nccl`` or ``gloo``.
    :ivar sync_batchnorm: BatchNorm layers (e.g. in the DINO head) use the statistics of the global batch.
    :ivar find_unused_parameters: DDP option; needed when some parameters get no gradient in a step (the ViT
        mask token without iBOT, a separate iBOT head on a batch without masks).
    :ivar fsdp_reshard_after_forward: FSDP frees the gathered parameters after the forward (less memory,
        one more all-gather in the backward).
    :ivar timeout_minutes: how long a collective waits for the other processes before failing.
    """

    strategy: str = "ddp"
    backend: str = "auto"
    sync_batchnorm: bool = True
    find_unused_parameters: bool = True
    fsdp_reshard_after_forward: bool = True
    timeout_minutes: int = 30

    def __post_init__(self) -> None:
        if self.strategy not in DISTRIBUTED_STRATEGIES:
            raise ValueError(f"strategy must be one of {DISTRIBUTED_STRATEGIES}, got {self.strategy!r}")
        if self.backend not in DISTRIBUTED_BACKENDS:
            raise ValueError(f"backend must be one of {DISTRIBUTED_BACKENDS}, got {self.backend!r}")
        if self.timeout_minutes < 1:
            raise ValueError(f"timeout_minutes must be >= 1, got {self.timeout_minutes}")


@dataclass
class TrainSection:
    """``train:`` — optimisation, schedules, checkpoints and logging of SSL pretraining.

    :ivar epochs: training epochs. :ivar batch_size: source images per step.
    :ivar precision: ``bf16`` (autocast on CPU and CUDA; on a CPU without AVX512-BF16 or AMX its matmuls run on
        fp32 units, :func:`cellssl.models.bf16.bf16_autocast`) or ``fp32``.
    :ivar lr: base learning rate at ``lr_reference_batch``; :ivar lr_scaling: ``sqrt`` / ``linear`` / ``none``.
    :ivar min_lr: final learning rate. :ivar warmup_epochs: linear lr warmup. :ivar start_warmup_lr: lr at step 0.
    :ivar weight_decay: at step 0, cosine to ``weight_decay_end``.
    :ivar teacher_momentum: EMA momentum at step 0, cosine to ``teacher_momentum_end``.
    :ivar teacher_temp: teacher temperature after a linear warmup of ``teacher_temp_warmup_epochs`` from
        ``warmup_teacher_temp``.
    :ivar freeze_last_layer_epochs: the heads' last layers get lr 0 for this long.
    :ivar clip_grad: max global gradient norm (``None`` or 0: no clipping).
    :ivar layerwise_decay: ViT layer-wise lr decay (1: none). :ivar patch_embed_lr_mult: patch-embedding lr factor.
    :ivar adamw_betas: AdamW betas.
    :ivar num_workers: DataLoader worker processes (augmentation); results do not depend on it.
    :ivar checkpoint_every_steps: write ``checkpoints/last.pt`` every N steps (and always at the end).
    :ivar max_steps: run length in steps (overrides ``epochs``). :ivar max_minutes: stop after this wall time.
    :ivar resume: require a checkpoint to continue from (a run directory with one is resumed anyway).
    :ivar log_every: write a ``metrics.jsonl`` line every N steps. :ivar tensorboard: also log to
        ``run_dir/tensorboard`` (needs ``pip install tensorboard``). :ivar progress: tqdm progress bar.
    :ivar data_weight: sampling weight of ``data:`` when ``extra_datasets`` are listed.
    :ivar extra_datasets: more datasets to train on, with weights. :ivar epoch_length: samples per epoch
        (default: all training samples of all datasets).
    :ivar collapse: collapse-monitor thresholds.
    :ivar distributed: multi-process training (see :class:`DistributedConfig`).
    """

    epochs: int = 100
    batch_size: int = 64
    precision: str = "bf16"
    lr: float = 5e-4
    lr_scaling: str = "sqrt"
    lr_reference_batch: int = 1024
    min_lr: float = 1e-6
    warmup_epochs: float = 10.0
    start_warmup_lr: float = 0.0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    teacher_momentum: float = 0.996
    teacher_momentum_end: float = 1.0
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup_epochs: float = 30.0
    freeze_last_layer_epochs: float = 1.0
    clip_grad: float | None = 3.0
    layerwise_decay: float = 1.0
    patch_embed_lr_mult: float = 1.0
    adamw_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    num_workers: int = 0
    checkpoint_every_steps: int = 500
    max_steps: int | None = None
    max_minutes: float | None = None
    resume: bool = False
    log_every: int = 1
    tensorboard: bool = False
    progress: bool = True
    data_weight: float = 1.0
    extra_datasets: list[DatasetMixEntry] = field(default_factory=list)
    epoch_length: int | None = None
    collapse: CollapseConfig = field(default_factory=CollapseConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.lr_scaling not in LR_SCALINGS:
            raise ValueError(f"lr_scaling must be one of {LR_SCALINGS}, got {self.lr_scaling!r}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr_reference_batch": self.lr_reference_batch,
                    "checkpoint_every_steps": self.checkpoint_every_steps, "log_every": self.log_every}
        for key, value in positive.items():
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        for key in ("max_steps", "epoch_length"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be null or >= 1, got {value}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be null or > 0, got {self.max_minutes}")
        if not (self.lr > 0 and self.min_lr >= 0 and self.start_warmup_lr >= 0):
            raise ValueError(f"need lr > 0 and min_lr, start_warmup_lr >= 0, got {self.lr}, {self.min_lr}, "
                             f"{self.start_warmup_lr}")
        for key in ("warmup_epochs", "teacher_temp_warmup_epochs", "freeze_last_layer_epochs", "weight_decay",
                    "weight_decay_end"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("teacher_momentum", "teacher_momentum_end"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {getattr(self, key)}")
        if not (self.teacher_temp > 0 and self.warmup_teacher_temp > 0):
            raise ValueError(f"teacher temperatures must be > 0, got {self.warmup_teacher_temp} -> {self.teacher_temp}")
        if self.clip_grad is not None and self.clip_grad < 0:
            raise ValueError(f"clip_grad must be null or >= 0, got {self.clip_grad}")
        if not 0.0 < self.layerwise_decay <= 1.0:
            raise ValueError(f"layerwise_decay must be in (0, 1], got {self.layerwise_decay}")
        if not self.patch_embed_lr_mult > 0:
            raise ValueError(f"patch_embed_lr_mult must be > 0, got {self.patch_embed_lr_mult}")
        if len(self.adamw_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adamw_betas):
            raise ValueError(f"adamw_betas must be [beta1, beta2] in [0, 1), got {list(self.adamw_betas)}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if not self.data_weight > 0:
            raise ValueError(f"data_weight must be > 0, got {self.data_weight}")

    def peak_lr(self, total_batch_size: int | None = None) -> float:
        """``lr`` scaled to ``total_batch_size`` (default ``batch_size``) by ``lr_scaling``."""
        from cellssl.train.schedules import scaled_lr

        batch = total_batch_size or self.batch_size
        if self.lr_scaling == "none":
            return self.lr
        return scaled_lr(self.lr, batch, self.lr_reference_batch, self.lr_scaling)
