"""Feature variants for the linear probe (cellssl.models.features.FeatureExtractor) and embed.features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cellssl.channels.bag import BagOfChannelsConfig, build_bag_of_channels
from cellssl.config.schema import EmbedSection
from cellssl.config.validate import validate_block
from cellssl.embed.store import read_embeddings
from cellssl.errors import ConfigError
from cellssl.models.features import FeatureExtractor
from cellssl.models.resnet import ResNetConfig, build_resnet
from cellssl.models.vit import ViTConfig, build_vit


def _vit(registers: int = 0, in_chans: int = 2) -> torch.nn.Module:
    config = ViTConfig(arch="vit_tiny", patch_size=4, img_size=16, embed_dim=32, depth=4, num_heads=2,
                       layerscale_init=None, num_register_tokens=registers)
    return build_vit(config, in_chans).eval()


def test_default_is_exactly_the_backbone_output() -> None:
    vit = _vit()
    x = torch.randn(3, 2, 16, 16)
    extractor = FeatureExtractor(vit)
    assert extractor.embed_dim == 32 and extractor.in_chans == 2
    with torch.no_grad():
        assert torch.equal(extractor(x), vit(x))


@torch.no_grad()
def test_last_blocks_cls_tokens_and_mean_patch_token_by_hand() -> None:
    vit = _vit(registers=2)
    x = torch.randn(3, 2, 16, 16)
    extractor = FeatureExtractor(vit, n_last_blocks=3, avgpool=True)
    assert extractor.embed_dim == 32 * 4
    out = extractor(x)
    assert out.shape == (3, 128)
    # By hand: run the blocks, normalise the outputs of blocks 1, 2, 3 and take their CLS tokens.
    tokens = vit.prepare_tokens(x)
    normed = []
    for blk in vit.blocks:
        tokens = blk(tokens)
        normed.append(vit.norm(tokens))
    for position, block in enumerate((1, 2, 3)):
        torch.testing.assert_close(out[:, 32 * position : 32 * (position + 1)], normed[block][:, 0])
    # The last block's CLS is the backbone's own output; the patch mean skips CLS and the 2 registers.
    torch.testing.assert_close(out[:, 64:96], vit(x))
    torch.testing.assert_close(out[:, 96:], normed[3][:, 3:].mean(dim=1))
    torch.testing.assert_close(out[:, 96:], vit.forward_features(x)["x_norm_patchtokens"].mean(dim=1))


@torch.no_grad()
def test_channel_strategies_work_unchanged_with_the_wider_features() -> None:
    vit = _vit(in_chans=1)
    extractor = FeatureExtractor(vit, n_last_blocks=2, avgpool=False)
    strategy = build_bag_of_channels(BagOfChannelsConfig(aggregate="concat"))
    images = torch.randn(2, 3, 16, 16)
    names = ("dna", "rna", "er")
    out = strategy.embed(extractor, images, names)
    assert out.shape == (2, strategy.out_dim(names, extractor.embed_dim)) == (2, 3 * 64)
    # Channel c of image b is the extractor's output on that single channel.
    torch.testing.assert_close(out[1, 64:128], extractor(images[1:2, 1:2])[0])


def test_non_vit_backbones_and_bad_settings_raise_config_errors() -> None:
    resnet = build_resnet(ResNetConfig(arch="resnet18", stem="small"), 2).eval()
    x = torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        assert torch.equal(FeatureExtractor(resnet)(x), resnet(x))
    with pytest.raises(ConfigError, match=r"'embed.features': n_last_blocks=2 / avgpool=False need a Vision "
                                          r"Transformer backbone, but ResNet"):
        FeatureExtractor(resnet, n_last_blocks=2)
    with pytest.raises(ConfigError, match="need a Vision Transformer"):
        FeatureExtractor(resnet, avgpool=True)
    with pytest.raises(ConfigError, match=r"'embed.features.n_last_blocks': is 5 but the backbone has only 4 blocks"):
        FeatureExtractor(_vit(), n_last_blocks=5)
    with pytest.raises(ConfigError, match=r"'embed.features.n_last_blocks': must be >= 1, got 0"):
        FeatureExtractor(_vit(), n_last_blocks=0)
    with pytest.raises(ConfigError, match=r"features.n_last_blocks must be >= 1, got 0"):
        validate_block({"features": {"n_last_blocks": 0}}, EmbedSection, "embed")
    section = validate_block({"features": {"n_last_blocks": 4, "avgpool": True}}, EmbedSection, "embed")
    assert (section.features.n_last_blocks, section.features.avgpool) == (4, True)
    assert validate_block(None, EmbedSection, "embed").features.n_last_blocks == 1


def test_embed_stage_writes_the_concatenated_features(tmp_path: Path) -> None:
    from cellssl.pipeline import execute

    config = OmegaConf.create({
        "run": {"output_dir": str(tmp_path / "run"), "num_threads": 1},
        "data": {"name": "synthetic_cells", "num_samples": 12, "image_size": 16, "num_channels": 2},
        "channels": {"name": "fixed"},
        "backbone": {"name": "vit_tiny", "patch_size": 4, "img_size": 16, "embed_dim": 32, "depth": 3,
                     "num_heads": 2, "layerscale_init": None},
        "embed": {"batch_size": 6, "precision": "fp32", "features": {"n_last_blocks": 2, "avgpool": True}},
    })
    _, outputs = execute(config, ["embed"])
    table = read_embeddings(outputs["embed"])
    assert table.embeddings.shape == (12, 3 * 32)
    assert table.manifest["info"]["features"] == {"n_last_blocks": 2, "avgpool": True}
