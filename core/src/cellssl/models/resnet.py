"""torchvision ResNet backbones taking any number of input channels.

Never downloads weights: the networks are built with ``weights=None`` and randomly initialised.
"""

from __future__ import annotations

import logging

from torch import nn
from torchvision import models as tv_models

from cellssl.models.resnet_config import RESNET_ARCHS, ResNetConfig

logger = logging.getLogger(__name__)


def build_resnet(config: ResNetConfig, in_chans: int) -> nn.Module:
    """A torchvision ResNet mapping ``(B, in_chans, H, W)`` to ``(B, embed_dim)``.

    The first convolution takes ``in_chans`` channels, ``fc`` is :class:`torch.nn.Identity`, and the
    module gets the attributes ``embed_dim`` (512 or 2048) and ``in_chans``.

    :raises ValueError: if ``in_chans < 1``.
    """
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    factory = getattr(tv_models, RESNET_ARCHS[config.arch])
    model = factory(weights=None, zero_init_residual=config.zero_init_residual)
    width = model.conv1.out_channels
    if config.stem == "small":
        model.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:
        model.conv1 = nn.Conv2d(in_chans, width, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.embed_dim = model.fc.in_features
    model.in_chans = in_chans
    model.fc = nn.Identity()
    logger.debug("built %s (stem %s, in_chans %d, embed_dim %d)", config.arch, config.stem, in_chans, model.embed_dim)
    return model
