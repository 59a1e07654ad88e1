"""The contract of a self-supervised objective: :class:`Objective`.

An objective owns everything that is specific to one SSL method, so the trainer stays generic:

- its multi-view transform (:meth:`Objective.make_views`: one :class:`~cellssl.data.sample.CellSample`
  and a ``torch.Generator`` -> a dict of views) and its collate function (:meth:`Objective.make_collate`);
  both are small picklable objects, so DataLoader workers never receive the model;
- the ``student`` (one ``nn.Module``: backbone + heads, so DDP can wrap it) and the ``teacher`` (same
  structure, no gradients, updated by EMA through :meth:`Objective.momentum_pairs`);
- the loss: :meth:`Objective.forward` maps a collated batch to an :class:`ObjectiveOutput` (the loss,
  the logged loss terms and what the collapse monitor needs);
- the module exported for embedding: :meth:`Objective.teacher_backbone`.

Plugins register objectives with ``cellssl_register_objectives``; the factory contract is
``factory(config, backbone_factory) -> Objective`` where ``backbone_factory()`` returns a freshly
initialised backbone (with the channel strategy's ``in_chans``).

The objective's ``state_dict`` (student, teacher, centring buffers) is what training checkpoints store.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from cellssl.data.multicrop import MultiCropTransform, collate_multicrop
from cellssl.data.normalize import Normalizer
from cellssl.data.sample import CellSample
from cellssl.objectives.ema import momentum_update

ViewFn = Callable[[CellSample, torch.Generator], dict[str, Any]]
CollateFn = Callable[[list[dict[str, Any]]], dict[str, Any]]

#: item key holding the per-sample seed (set by the training data pipeline; collate functions use it
#: to seed batch-level randomness such as iBOT masks, so batches are reproducible with any worker count).
SEED_KEY = "seed"


@dataclass
class ObjectiveOutput:
    """What :meth:`Objective.forward` returns for one batch.

    :ivar loss: scalar float32 loss with gradient (the sum of the weighted terms).
    :ivar terms: detached scalar tensors to log (``loss`` and each term, e.g. ``dino_loss``).
    :ivar teacher_probs: ``(N, K)`` teacher target distributions of this step (for the collapse monitor).
    :ivar teacher_embeddings: ``(N, D)`` teacher backbone embeddings of this step (collapse monitor).
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_probs: torch.Tensor | None = None
    teacher_embeddings: torch.Tensor | None = None


class MultiCropViews:
    """Sample -> ``{"global": [...], "local": [...], "index": int}`` with a :class:`MultiCropTransform`.

    Picklable (DataLoader workers run it).
    """

    def __init__(self, transform: MultiCropTransform) -> None:
        self.transform = transform

    def __call__(self, sample: CellSample, generator: torch.Generator) -> dict[str, Any]:
        views: dict[str, Any] = dict(self.transform(sample.image, sample.channels, generator))
        views["index"] = sample.index
        return views


class MultiCropCollate:
    """:func:`~cellssl.data.multicrop.collate_multicrop`, with the per-sample seeds kept as an int64 tensor."""

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_multicrop(items)


def batch_rng(items: list[dict[str, Any]]) -> np.random.Generator:
    """A numpy generator seeded from the items' :data:`SEED_KEY` values (all of them, in order).

    The same samples with the same seeds give the same generator, whichever process collates them.
    Items without seeds give a generator seeded with 0.
    """
    seeds = [int(item[SEED_KEY]) for item in items if SEED_KEY in item]
    return np.random.default_rng(seeds if seeds else 0)


def _stochastic_modules(module: nn.Module) -> list[nn.Module]:
    """Dropout and stochastic-depth modules (by class name ``DropPath``) inside ``module``."""
    found = []
    for sub in module.modules():
        if isinstance(sub, nn.modules.dropout._DropoutNd) or type(sub).__name__ == "DropPath":
            found.append(sub)
    return found


class Objective(nn.Module, ABC):
    """Base class of SSL objectives (see the module docstring for the contract).

    :param student: the student network (backbone + heads). The teacher is a deep copy of it with
        ``requires_grad=False``; it runs with batch statistics (BatchNorm in training mode, as in DINO)
        but never with dropout or stochastic depth.
    """

    name: str = "abstract"

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.teacher = copy.deepcopy(student)
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        # the callable used for the student's forward pass: the student itself, or a wrapper such as
        # DistributedDataParallel (kept out of the module tree so state dicts do not change)
        object.__setattr__(self, "_student_call", student)
        self._set_teacher_mode()

    # ------------------------------------------------------------------ data side

    @abstractmethod
    def make_views(self, normalizer: Normalizer) -> ViewFn:
        """The picklable multi-view transform: ``views(sample, generator) -> item dict``.

        :param normalizer: ``normalizer(image, channel_names)`` applied to every view (the run's
            ``normalize:`` section, shared with embedding).
        """

    def make_collate(self) -> CollateFn:
        """The picklable collate function of this objective's items (default: view-major stacking)."""
        return MultiCropCollate()

    @staticmethod
    def batch_size(batch: dict[str, Any]) -> int:
        """Number of source images in a collated batch."""
        index = batch.get("index")
        if isinstance(index, torch.Tensor):
            return int(index.shape[0])
        return len(index) if index is not None else 0

    # ------------------------------------------------------------------ model side

    @property
    def student_call(self) -> nn.Module:
        """The module the student forward goes through (the student, or its DDP wrapper)."""
        return self._student_call  # type: ignore[no-any-return]

    def wrap_student(self, wrapper: Callable[[nn.Module], nn.Module]) -> nn.Module:
        """Route the student's forward through ``wrapper(self.student)`` (e.g. ``DistributedDataParallel``).

        The wrapper is not registered as a submodule: state dicts and :meth:`momentum_pairs` keep using the
        bare student. Returns the wrapper.
        """
        wrapped = wrapper(self.student)
        object.__setattr__(self, "_student_call", wrapped)
        return wrapped

    @abstractmethod
    def forward(self, batch: dict[str, Any], *, teacher_temp: float) -> ObjectiveOutput:
        """Loss of one collated batch (on the model's device).

        :param batch: output of :meth:`make_collate`'s function, tensors moved to the device.
        :param teacher_temp: this step's teacher temperature (from the schedules).
        """

    @abstractmethod
    def teacher_backbone(self) -> nn.Module:
        """The teacher's backbone: what ``cellssl embed`` uses after training."""

    @abstractmethod
    def student_backbone(self) -> nn.Module:
        """The student's backbone."""

    def momentum_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Matching ``(student tensors, teacher tensors)`` for the EMA update, paired by parameter name.

        :raises ValueError: if student and teacher parameters do not have the same names.
        """
        student = dict(self.student.named_parameters())
        teacher = dict(self.teacher.named_parameters())
        if student.keys() != teacher.keys():
            differing = sorted(set(student) ^ set(teacher))[:5]
            raise ValueError(f"student and teacher parameters differ: {differing}")
        names = list(teacher)
        return [student[n] for n in names], [teacher[n] for n in names]

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA ``teacher <- m * teacher + (1 - m) * student`` over :meth:`momentum_pairs`."""
        student, teacher = self.momentum_pairs()
        momentum_update(student, teacher, momentum)

    def _set_teacher_mode(self) -> None:
        self.teacher.train(self.training)
        for sub in _stochastic_modules(self.teacher):
            sub.train(False)

    def train(self, mode: bool = True) -> Objective:
        """Set training mode; the teacher never uses dropout / stochastic depth."""
        super().train(mode)
        self._set_teacher_mode()
        return self

    def describe(self) -> str:
        """One line for logs."""
        n_student = sum(p.numel() for p in self.student.parameters())
        return f"{self.name}: student {n_student / 1e6:.2f} M parameters"
