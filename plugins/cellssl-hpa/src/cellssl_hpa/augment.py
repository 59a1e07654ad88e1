"""HPA-aware training augmentations for the trainer: Cell-DINO's recipe on cellssl's augmentation blocks.

The recipe (Cell-DINO's HPA models): random resized crop, horizontal and vertical flips, a random gain on
the protein channel only, per-channel brightness / contrast, and dropping one channel with probability
0.2 -- never the protein channel, the one the labels are about. No colour jitter, blur, noise or
solarisation; images are then standardised per image and channel (``normalize: {mode: per_image}``).
The probabilities and ranges below are cellssl's choices where the recipe does not fix them.

Use :func:`hpa_augment_config` (one :class:`~cellssl.data.augment.AugmentConfig` per view kind),
:func:`hpa_multicrop_config` (global and local views), or :data:`HPA_AUGMENT` (the same settings as a
plain mapping, for a YAML ``global_aug:`` / ``local_aug:`` block).
"""

from __future__ import annotations

import copy
from typing import Any

from cellssl_hpa.classes import PROTEIN

HPA_AUGMENT: dict[str, Any] = {
    "crop": {"enabled": True},
    "hflip": {"enabled": True, "p": 0.5},
    "vflip": {"enabled": True, "p": 0.5},
    "rot90": {"enabled": False},
    "rescale": {"enabled": True, "p": 0.5, "channels": [PROTEIN], "gain": [0.5, 1.5]},
    "brightness_contrast": {"enabled": True, "p": 0.8, "brightness": [0.8, 1.2], "contrast": [0.8, 1.2]},
    "blur": {"enabled": False},
    "noise": {"enabled": False},
    "channel_drop": {"enabled": True, "p": 0.2, "max_drop": 1, "protected": [PROTEIN]},
}


def hpa_augment_config(**overrides: Any) -> Any:
    """The HPA augmentations as an :class:`~cellssl.data.augment.AugmentConfig`.

    :param overrides: replace whole blocks, e.g. ``channel_drop={"enabled": False}`` (merged into the
        block's defaults above).
    :raises ValueError: for an unknown block name or an invalid value (from the block's dataclass).
    """
    from cellssl.api import (
        AugmentConfig,
        BlurConfig,
        BrightnessContrastConfig,
        ChannelDropConfig,
        CropConfig,
        FlipConfig,
        IntensityRescaleConfig,
        NoiseConfig,
        Rot90Config,
    )

    blocks = {"crop": CropConfig, "hflip": FlipConfig, "vflip": FlipConfig, "rot90": Rot90Config,
              "rescale": IntensityRescaleConfig, "brightness_contrast": BrightnessContrastConfig,
              "blur": BlurConfig, "noise": NoiseConfig, "channel_drop": ChannelDropConfig}
    unknown = sorted(set(overrides) - set(blocks))
    if unknown:
        raise ValueError(f"unknown augmentation block(s) {unknown}; blocks are {sorted(blocks)}")
    settings = copy.deepcopy(HPA_AUGMENT)
    for name, values in overrides.items():
        settings[name] = {**settings[name], **values}
    return AugmentConfig(**{name: blocks[name](**values) for name, values in settings.items()})


def hpa_multicrop_config(global_size: int = 224, local_size: int = 96, n_local: int = 8) -> Any:
    """DINO multi-crop views with the HPA augmentations on both view kinds and per-image standardisation.

    :return: a :class:`~cellssl.data.multicrop.MultiCropConfig`.
    """
    from cellssl.api import MultiCropConfig, NormalizeConfig

    return MultiCropConfig(global_size=global_size, local_size=local_size, n_local=n_local,
                           global_aug=hpa_augment_config(), local_aug=hpa_augment_config(),
                           normalize=NormalizeConfig(mode="per_image"))
