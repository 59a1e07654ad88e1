"""``dino``: DINO v1 self-distillation (Caron et al. 2021) for any backbone that returns ``(B, D)``.

Multi-crop (``n_global`` global + ``n_local`` local views); the student sees every view, the teacher
(an EMA of the student) only the global ones. Student and teacher share the architecture: backbone +
:class:`~cellssl.objectives.heads.DINOHead` (weight-normalised prototypes). Teacher scores become
targets by EMA centring + sharpening (DINO) or Sinkhorn-Knopp; the loss is the cross-entropy over all
(teacher view, other student view) pairs (:class:`~cellssl.objectives.dino_loss.DINOLoss`).

YAML::

    objective:
      name: dino
      multicrop: {global_size: 224, local_size: 96, n_local: 8}
      head: {out_dim: 65536, use_bn: false}
      centering: ema          # or sinkhorn_knopp
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cellssl.data.multicrop import MultiCropConfig, MultiCropTransform
from cellssl.data.normalize import Normalizer
from cellssl.errors import ConfigError
from cellssl.objectives.base import MultiCropViews, Objective, ObjectiveOutput, ViewFn
from cellssl.objectives.centering import EMACentering, sinkhorn_knopp
from cellssl.objectives.dino_config import CENTERINGS as CENTERINGS
from cellssl.objectives.dino_config import DINOConfig
from cellssl.objectives.dino_config import HeadConfig as HeadConfig
from cellssl.objectives.dino_loss import DINOLoss

logger = logging.getLogger(__name__)

BackboneFactory = Callable[[], nn.Module]


class SSLNetwork(nn.Module):
    """Backbone + DINO head (+ optional iBOT patch head): the student (and, copied, the teacher).

    One module, so a DDP wrapper sees the whole student forward. ``forward`` returns a dict:

    - ``global_embed``: ``(Bg, D)`` backbone embeddings of the global crops;
    - ``global_logits`` ``(Bg, K)`` and ``local_logits`` ``(Bl, K)`` (or None): DINO head outputs;
    - ``patch_logits``: ``(M, Kp)`` head outputs of the patch tokens selected by ``masks`` (or None).

    :param backbone: maps ``(B, C, H, W)`` to ``(B, D)``; for patch outputs it must be a ViT with
        ``forward_features`` returning ``x_norm_clstoken`` and ``x_norm_patchtokens``.
    :param dino_head: head of the image-level term.
    :param ibot_head: separate head of the patch term; None shares ``dino_head``.
    """

    def __init__(self, backbone: nn.Module, dino_head: nn.Module, ibot_head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.ibot_head = ibot_head

    def forward(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        mask_inputs: bool = True,
    ) -> dict[str, torch.Tensor | None]:
        """:param masks: ``(Bg, N)`` bool patch masks of the global crops: their patch tokens are returned
            through the patch head; with ``mask_inputs`` those patches are also replaced by the mask token
            (the student), without it the input is left intact (the teacher).
        """
        masked_tokens = None
        has_local = local_crops is not None and local_crops.numel() > 0
        if has_local and getattr(self.backbone, "crop_packing", "off") != "off":
            # one pass of the ViT blocks over global and local crops together (cellssl.models.packed)
            feats, local_feats = self.backbone.forward_features(
                [global_crops, local_crops], masks=[masks if mask_inputs else None, None])
            cls, local_cls = feats["x_norm_clstoken"], local_feats["x_norm_clstoken"]
            if masks is not None:
                masked_tokens = feats["x_norm_patchtokens"][masks]
        else:
            if masks is not None:
                feats = self.backbone.forward_features(global_crops, masks=masks if mask_inputs else None)
                cls = feats["x_norm_clstoken"]
                masked_tokens = feats["x_norm_patchtokens"][masks]
            else:
                cls = self.backbone(global_crops)
            local_cls = self.backbone(local_crops) if has_local else None
        n_global = cls.shape[0]
        n_local = local_cls.shape[0] if local_cls is not None else 0
        parts = [cls] + ([local_cls] if local_cls is not None else [])
        patch_logits = None
        if masked_tokens is not None and self.ibot_head is None:
            # shared head: one pass over CLS tokens and masked patch tokens
            logits = self.dino_head(torch.cat([*parts, masked_tokens.to(cls.dtype)]))
            patch_logits = logits[n_global + n_local :]
            logits = logits[: n_global + n_local]
        else:
            logits = self.dino_head(torch.cat(parts) if len(parts) > 1 else cls)
            if masked_tokens is not None:
                patch_logits = self.ibot_head(masked_tokens)
        return {
            "global_embed": cls,
            "global_logits": logits[:n_global],
            "local_logits": logits[n_global:] if n_local else None,
            "patch_logits": patch_logits,
        }


def check_crop_sizes(backbone: nn.Module, multicrop: MultiCropConfig, key: str = "objective.multicrop") -> None:
    """A patch backbone needs crop sizes that are multiples of its patch size.

    :raises ConfigError: naming ``global_size`` / ``local_size``.
    """
    patch = getattr(backbone, "patch_size", None)
    if not patch:
        return
    for name in ("global_size", "local_size"):
        size = getattr(multicrop, name)
        if name == "local_size" and multicrop.n_local == 0:
            continue
        if size % patch:
            raise ConfigError(f"{key}.{name}", f"is {size}, not a multiple of the backbone's patch_size {patch}; "
                                               f"use e.g. {max(patch, size // patch * patch)}.")


class DINOObjective(Objective):
    """DINO v1 (see the module docstring).

    :param config: validated :class:`DINOConfig`.
    :param backbone_factory: returns a freshly initialised backbone (called once; the teacher is a copy).
    """

    name = "dino"

    def __init__(self, config: DINOConfig, backbone_factory: BackboneFactory) -> None:
        backbone = backbone_factory()
        embed_dim = getattr(backbone, "embed_dim", None)
        if not isinstance(embed_dim, int):
            raise ConfigError("backbone", "the backbone must expose an integer `embed_dim` (its output size).")
        check_crop_sizes(backbone, config.multicrop)
        if config.multicrop.n_global < 2 and config.multicrop.n_local < 1:
            raise ConfigError("objective.multicrop", "needs n_global >= 2 or n_local >= 1: the student must "
                                                     "predict the teacher's output for another view.")
        super().__init__(self.build_network(config, backbone, embed_dim))
        self.config = config
        self.n_global = config.multicrop.n_global
        self.n_local = config.multicrop.n_local
        self.dino_loss = DINOLoss(config.head.out_dim, config.student_temp)
        self.dino_center = EMACentering(config.head.out_dim, config.center_momentum) \
            if config.centering == "ema" else None

    def build_network(self, config: DINOConfig, backbone: nn.Module, embed_dim: int) -> SSLNetwork:
        """The student network (overridden by DINOv2 to add the patch head)."""
        return SSLNetwork(backbone, config.head.build(embed_dim))

    # ------------------------------------------------------------------ data

    def make_views(self, normalizer: Normalizer) -> ViewFn:
        mc = self.config.multicrop
        transform = MultiCropTransform(mc.global_size, mc.local_size, mc.n_global, mc.n_local, mc.global_scale,
                                       mc.local_scale, mc.global_aug, mc.local_aug, normalizer)
        return MultiCropViews(transform)

    # ------------------------------------------------------------------ model

    def student_backbone(self) -> nn.Module:
        return self.student.backbone  # type: ignore[return-value]

    def teacher_backbone(self) -> nn.Module:
        return self.teacher.backbone  # type: ignore[return-value]

    def targets(self, logits: torch.Tensor, temp: float, center: EMACentering | None) -> torch.Tensor:
        """Teacher target distributions (float32, no gradient): centred softmax or Sinkhorn-Knopp."""
        if center is not None:
            return center.softmax_centered(logits, temp)
        return sinkhorn_knopp(logits, temp, self.config.sinkhorn_iterations)

    def forward(self, batch: dict[str, Any], *, teacher_temp: float) -> ObjectiveOutput:
        global_crops, local_crops = batch["global"], batch.get("local")
        with torch.no_grad():
            teacher_out = self.teacher(global_crops)
            teacher_probs = self.targets(teacher_out["global_logits"], teacher_temp, self.dino_center)
        student_out = self.student_call(global_crops, local_crops)
        loss = self.dino_term(student_out, teacher_probs)
        if self.dino_center is not None:
            self.dino_center.update(teacher_out["global_logits"])
        return ObjectiveOutput(loss, {"loss": loss.detach(), "dino_loss": loss.detach()}, teacher_probs,
                               teacher_out["global_embed"].detach())

    def dino_term(self, student_out: dict[str, Any], teacher_probs: torch.Tensor) -> torch.Tensor:
        """The DINO loss between all student views and the teacher's global views."""
        logits = student_out["global_logits"]
        if student_out["local_logits"] is not None:
            logits = torch.cat([logits, student_out["local_logits"]])
        n_views = self.n_global + (self.n_local if student_out["local_logits"] is not None else 0)
        return self.dino_loss(logits.chunk(n_views), teacher_probs.chunk(self.n_global))


def build_dino(config: DINOConfig, backbone_factory: BackboneFactory) -> DINOObjective:
    """Factory of the ``dino`` objective."""
    return DINOObjective(config, backbone_factory)
