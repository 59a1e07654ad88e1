"""``dinov2``: DINO + iBOT masked-patch loss + KoLeo (Oquab et al. 2023, "DINOv2").

On top of :mod:`cellssl.objectives.dino`:

- iBOT (Zhou et al. 2022): the collate function draws block masks of the global crops' patch grids
  (:func:`~cellssl.objectives.masking.sample_masks`, seeded from the samples' seeds); the student sees
  masked patches replaced by the ViT's mask token, the teacher the intact crop; the masked patch tokens
  go through the DINO head (shared, the default) or a separate patch head and
  :class:`~cellssl.objectives.ibot_loss.IBOTPatchLoss` compares them. Needs a ViT (patch tokens).
- KoLeo (Sablayrolles et al. 2019) on the student's global-crop embeddings, per global view.
- Teacher targets by Sinkhorn-Knopp by default (``centering: ema`` is available).

``loss = dino_weight * dino + ibot.weight * ibot + koleo_weight * koleo``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cellssl.data.multicrop import collate_multicrop
from cellssl.errors import ConfigError
from cellssl.objectives.base import ObjectiveOutput, batch_rng
from cellssl.objectives.centering import EMACentering
from cellssl.objectives.dino import BackboneFactory, DINOConfig, DINOObjective, SSLNetwork
from cellssl.objectives.dinov2_config import DINOv2Config
from cellssl.objectives.dinov2_config import IBOTConfig as IBOTConfig
from cellssl.objectives.ibot_loss import IBOTPatchLoss
from cellssl.objectives.koleo import KoLeoLoss
from cellssl.objectives.masking import dinov2_block_generator, sample_masks


class MaskedCollate:
    """View-major collate plus iBOT masks ``(n_global * B, N)`` of the global crops (key ``masks``).

    The masks are drawn from a generator seeded by the samples' seeds, so a batch is the same in any
    process. Picklable.
    """

    def __init__(self, grid: int, ratio: tuple[float, float], probability: float) -> None:
        self.grid, self.ratio, self.probability = grid, ratio, probability
        self.generator = dinov2_block_generator(grid, grid)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate_multicrop(items)
        batch["masks"] = sample_masks(batch["global"].shape[0], self.grid, self.ratio, self.probability,
                                      batch_rng(items), self.generator)
        return batch


class DINOv2Objective(DINOObjective):
    """DINO + iBOT + KoLeo (see the module docstring)."""

    name = "dinov2"

    def __init__(self, config: DINOv2Config, backbone_factory: BackboneFactory) -> None:
        super().__init__(config, backbone_factory)
        self.config: DINOv2Config = config
        self.ibot_loss = IBOTPatchLoss(self._patch_out_dim(), config.student_temp)
        self.koleo_loss = KoLeoLoss()
        self.patch_center = EMACentering(self._patch_out_dim(), config.center_momentum) \
            if config.centering == "ema" and config.ibot.enabled else None

    def _patch_out_dim(self) -> int:
        ibot = self.config.ibot
        return ibot.head.out_dim if ibot.separate_head else self.config.head.out_dim

    def build_network(self, config: DINOConfig, backbone: nn.Module, embed_dim: int) -> SSLNetwork:
        assert isinstance(config, DINOv2Config)
        ibot = config.ibot
        if ibot.enabled and not (hasattr(backbone, "forward_features") and getattr(backbone, "patch_size", None)):
            raise ConfigError(
                "objective.ibot.enabled",
                f"the iBOT term needs patch tokens, but the backbone ({type(backbone).__name__}) has none. "
                "Use a ViT backbone, set `objective.ibot.enabled: false`, or use `objective: {name: dino}`.",
            )
        patch_head = ibot.head.build(embed_dim) if ibot.enabled and ibot.separate_head else None
        return SSLNetwork(backbone, config.head.build(embed_dim), patch_head)

    def make_collate(self) -> Any:
        if not self.config.ibot.enabled:
            return super().make_collate()
        grid = self.config.multicrop.global_size // int(self.student_backbone().patch_size)
        low, high = self.config.ibot.mask_ratio_min_max
        return MaskedCollate(grid, (low, high), self.config.ibot.mask_sample_probability)

    def forward(self, batch: dict[str, Any], *, teacher_temp: float) -> ObjectiveOutput:
        cfg = self.config
        global_crops, local_crops = batch["global"], batch.get("local")
        masks = batch.get("masks") if cfg.ibot.enabled else None
        if masks is not None and not bool(masks.any()):
            masks = None
        with torch.no_grad():
            teacher_out = self.teacher(global_crops, None, masks, mask_inputs=False)
            teacher_probs = self.targets(teacher_out["global_logits"], teacher_temp, self.dino_center)
            patch_probs = None
            if masks is not None:
                patch_probs = self.targets(teacher_out["patch_logits"], teacher_temp, self.patch_center)
        student_out = self.student_call(global_crops, local_crops, masks, mask_inputs=True)

        dino = self.dino_term(student_out, teacher_probs)
        zero = dino.new_zeros(())
        ibot = zero
        if masks is not None:
            ibot = self.ibot_loss(student_out["patch_logits"], patch_probs, masks)
        koleo = zero
        embeds = student_out["global_embed"]
        if cfg.koleo_weight > 0 and embeds.shape[0] // self.n_global >= 2:
            koleo = sum((self.koleo_loss(chunk) for chunk in embeds.chunk(self.n_global)), zero)
        loss = cfg.dino_weight * dino + cfg.ibot.weight * ibot + cfg.koleo_weight * koleo

        if self.dino_center is not None:
            self.dino_center.update(teacher_out["global_logits"])
        if self.patch_center is not None and masks is not None:
            self.patch_center.update(teacher_out["patch_logits"])
        terms = {"loss": loss.detach(), "dino_loss": dino.detach(), "ibot_loss": ibot.detach(),
                 "koleo_loss": koleo.detach()}
        return ObjectiveOutput(loss, terms, teacher_probs, teacher_out["global_embed"].detach())


def build_dinov2(config: DINOv2Config, backbone_factory: BackboneFactory) -> DINOv2Objective:
    """Factory of the ``dinov2`` objective."""
    return DINOv2Objective(config, backbone_factory)
