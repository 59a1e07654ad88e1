"""The typed run plan: every section of a run config, validated, in one object (:class:`RunPlan`).

A plan is made by :func:`cellssl.plan.build.build_plan` (structure: every block against its dataclass)
and completed by :func:`cellssl.plan.checks.check_plan` (checks across sections that open the data and
the weights). Stages receive the plan and read its typed sections; none of them re-validates a raw block.
This module imports neither torch nor any plugin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from cellssl.config.schema import EmbedSection, NormalizeSection, RunSection
from cellssl.data.digests import plain as _plain
from cellssl.plugins.registry import Entry


@dataclass(frozen=True)
class Component:
    """One validated ``{name: ..., <params>}`` block.

    :ivar key: where the block sits in the run config (``channels``, ``eval[3]``), for messages.
    :ivar entry: the registered entry the block names.
    :ivar config: the block's parameters, an instance of ``entry.config_cls`` with every default filled.
    """

    key: str
    entry: Entry
    config: Any

    @property
    def name(self) -> str:
        """The registered name."""
        return self.entry.name

    def build(self, **context: Any) -> Any:
        """Call the entry's factory with the validated parameters (and the kind's context arguments)."""
        return self.entry.factory(self.config, **context)

    def as_dict(self) -> dict[str, Any]:
        """``{"name": ..., **every parameter}``: the block with all defaults, as plain data."""
        return {"name": self.entry.name, **_plain(self.config)}


@dataclass(frozen=True)
class DataSpec:
    """A validated ``data:`` block (the run's, or one of ``train.extra_datasets``).

    :ivar component: the dataset entry and its parameters (core-level keys removed).
    :ivar use_channels: channels to keep, in this order (names or vocabulary aliases); ``None``: all.
    :ivar allow_outside_root: accept image paths that resolve outside ``root`` (``..``, symlinks).
    """

    component: Component
    use_channels: tuple[str, ...] | None = None
    allow_outside_root: bool = False

    @property
    def key(self) -> str:
        """The block's key path (``data``, ``train.extra_datasets[0].data``)."""
        return self.component.key

    def as_dict(self) -> dict[str, Any]:
        """The block with every default, core-level keys included."""
        block = self.component.as_dict()
        block["use_channels"] = list(self.use_channels) if self.use_channels is not None else None
        block["allow_outside_root"] = self.allow_outside_root
        return block


@dataclass(frozen=True)
class ExtraDataset:
    """One validated entry of ``train.extra_datasets``: its data block and its sampling weight."""

    data: DataSpec
    weight: float


@dataclass(frozen=True)
class WeightsSpec:
    """``weights:`` — the backbone checkpoint to embed (or fine-tune) with.

    Written either as a path (``weights: runs/a/teacher_backbone.pt``) or as a mapping
    ``{path: ..., key_prefix: student.backbone.}``.

    :ivar path: the checkpoint file (checked to exist when the plan is built).
    :ivar key_prefix: select the keys under this prefix (e.g. the student of a training checkpoint).
    """

    path: Path
    key_prefix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "key_prefix": self.key_prefix}


@dataclass(frozen=True)
class LauncherSpec(Component):
    """``launcher:`` — the launcher entry (``local``: this process, or one rank under torchrun; ``slurm``; or a
    plugin's) and its validated settings."""

    @property
    def settings(self) -> Any:
        """The launcher's validated parameters (``config``)."""
        return self.config


@dataclass
class RunPlan:
    """Everything a run will do, validated before any stage starts.

    :ivar config: the resolved config as given (saved as the run directory's ``config.yaml``).
    :ivar run: the ``run:`` section.
    :ivar stages: the stages to execute, in order.
    :ivar data: the run's dataset block (``None``: no ``data:``).
    :ivar channels: the channel strategy (``fixed`` when ``channels:`` is absent).
    :ivar backbone: the backbone block (``None``: no ``backbone:``).
    :ivar objective: the SSL objective (``None``: no ``objective:``; then there is no train stage).
    :ivar train: the ``train:`` section (:class:`cellssl.train.config.TrainSection`).
    :ivar extra_datasets: the validated ``train.extra_datasets``.
    :ivar embed: the ``embed:`` section.
    :ivar normalize: the ``normalize:`` section.
    :ivar evaluators: one component per ``eval[i]``.
    :ivar launcher: the launcher.
    :ivar weights: the ``weights:`` checkpoint (``None``: the run's trained teacher, else random).
    :ivar model: the model card ``model:`` named (its sections are already merged into the config).
    :ivar finetune: the ``finetune:`` section (:class:`cellssl.finetune.config.FinetuneSection`; ``None``: absent).
    :ivar checked: set by :func:`~cellssl.plan.checks.check_plan` once the cross-section checks passed.
    :ivar cache: objects built by the checks and reused by the stages (datasets), never by hand.
    """

    config: DictConfig
    run: RunSection
    stages: list[str]
    data: DataSpec | None
    channels: Component
    backbone: Component | None
    objective: Component | None
    train: Any
    extra_datasets: list[ExtraDataset]
    embed: EmbedSection
    normalize: NormalizeSection
    evaluators: list[Component]
    launcher: LauncherSpec
    weights: WeightsSpec | None
    model: str | None = None
    finetune: Any = None
    checked: bool = False
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def run_dir(self) -> Path:
        """The run directory (``run.output_dir``)."""
        return Path(self.run.output_dir or "runs/run")

    def sections(self) -> dict[str, Any]:
        """Every section with all defaults, as plain data (what ``cellssl config show`` prints); ``model`` only
        when a model card filled the sections, ``finetune`` only when configured."""
        return {
            **({"model": self.model} if self.model else {}),
            "run": _plain(self.run),
            "data": self.data.as_dict() if self.data else None,
            "channels": self.channels.as_dict(),
            "backbone": self.backbone.as_dict() if self.backbone else None,
            "weights": self.weights.as_dict() if self.weights else None,
            "normalize": _plain(self.normalize),
            "objective": self.objective.as_dict() if self.objective else None,
            "train": {**_plain(self.train),
                      "extra_datasets": [{"data": e.data.as_dict(), "weight": e.weight} for e in self.extra_datasets]},
            **({"finetune": _plain(self.finetune)} if self.finetune is not None else {}),
            "embed": _plain(self.embed),
            "eval": [e.as_dict() for e in self.evaluators],
            "launcher": self.launcher.as_dict(),
        }
