"""Tests of the DINOv2-layout ViT (cellssl.models.vit) and the attention backends."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from cellssl.errors import ConfigError, DataError
from cellssl.models.attention import (
    AttentionBackendError,
    attention,
    attention_probs,
    available_backends,
)
from cellssl.models.vit import ARCHS, VisionTransformer, ViTConfig, build_vit, interpolate_pos_embed


def tiny(in_chans: int = 3, **overrides) -> VisionTransformer:
    params = dict(arch="vit_tiny", patch_size=4, img_size=16, embed_dim=24, depth=2, num_heads=2)
    params.update(overrides)
    return build_vit(ViTConfig(**params), in_chans).eval()


def dinov2_keys(depth: int, registers: bool, layerscale: bool) -> set[str]:
    keys = {"cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    keys |= {"norm.weight", "norm.bias"}
    if registers:
        keys.add("register_tokens")
    per_block = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
    for i in range(depth):
        for name in per_block:
            keys |= {f"blocks.{i}.{name}.weight", f"blocks.{i}.{name}.bias"}
        if layerscale:
            keys |= {f"blocks.{i}.ls1.gamma", f"blocks.{i}.ls2.gamma"}
    return keys


# --- layout and config ---------------------------------------------------------------------------


def test_state_dict_keys_match_dinov2_layout_with_registers_and_layerscale():
    model = tiny(in_chans=4, depth=3, num_register_tokens=4, layerscale_init=1.0)
    state = model.state_dict()
    assert set(state) == dinov2_keys(depth=3, registers=True, layerscale=True)
    assert state["cls_token"].shape == (1, 1, 24)
    assert state["pos_embed"].shape == (1, 1 + 4 * 4, 24)
    assert state["mask_token"].shape == (1, 24)
    assert state["register_tokens"].shape == (1, 4, 24)
    assert state["patch_embed.proj.weight"].shape == (24, 4, 4, 4)
    assert state["blocks.2.attn.qkv.weight"].shape == (72, 24)
    assert state["blocks.0.mlp.fc1.weight"].shape == (96, 24)
    assert torch.equal(state["blocks.1.ls2.gamma"], torch.ones(24))


@pytest.mark.parametrize("layerscale_init", [None, 0.0])
def test_no_layerscale_and_no_registers_give_no_such_keys(layerscale_init):
    model = tiny(layerscale_init=layerscale_init)
    assert set(model.state_dict()) == dinov2_keys(depth=2, registers=False, layerscale=False)


def test_arch_table_and_attributes():
    assert ARCHS == {
        "vit_tiny": (192, 12, 3),
        "vit_small": (384, 12, 6),
        "vit_base": (768, 12, 12),
        "vit_large": (1024, 24, 16),
    }
    assert ViTConfig(arch="vit_large", patch_size=14, img_size=518).dims() == (1024, 24, 16)
    assert ViTConfig(arch="vit_small", depth=4).dims() == (384, 4, 6)
    model = build_vit(ViTConfig(arch="vit_tiny", patch_size=8, img_size=32, num_register_tokens=2), 5)
    assert (model.embed_dim, model.patch_size, model.in_chans, model.num_register_tokens) == (192, 8, 5, 2)
    assert len(model.blocks) == 12 and model.blocks[0].attn.num_heads == 3


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"arch": "vit_huge"}, "unknown ViT arch 'vit_huge'"),
        ({"img_size": 30, "patch_size": 8}, r"img_size \(30\) must be a positive multiple of patch_size \(8\)"),
        ({"embed_dim": 30, "num_heads": 4}, r"embed_dim \(30\) must be divisible by num_heads \(4\)"),
        ({"attention": "flash"}, "unknown backend 'flash'"),
        ({"drop_path_rate": 1.0}, r"drop_path_rate must be in \[0, 1\)"),
        ({"num_register_tokens": -1}, "num_register_tokens must be >= 0"),
    ],
)
def test_config_validation(params, match):
    with pytest.raises(ValueError, match=match):
        ViTConfig(**params)


def test_config_is_an_omegaconf_structured_config():
    base = OmegaConf.structured(ViTConfig)
    merged = OmegaConf.merge(base, {"layerscale_init": None, "patch_size": 8, "num_register_tokens": 4})
    config = OmegaConf.to_object(merged)
    assert isinstance(config, ViTConfig)
    assert (config.layerscale_init, config.patch_size, config.num_register_tokens) == (None, 8, 4)


def test_initialisation_follows_dinov2():
    model = tiny(layerscale_init=0.1, num_register_tokens=2)
    assert model.cls_token.abs().max() < 1e-4 and model.cls_token.abs().max() > 0
    assert model.register_tokens.abs().max() < 1e-4
    assert torch.equal(model.mask_token, torch.zeros(1, 24))
    assert torch.equal(model.blocks[0].ls1.gamma, torch.full((24,), 0.1))
    assert torch.equal(model.blocks[1].mlp.fc2.bias, torch.zeros(24))
    weights = torch.cat([b.attn.qkv.weight.flatten() for b in model.blocks])
    assert weights.abs().max() <= 2.0 and 0.015 < weights.std() < 0.025


# --- shapes and positional embeddings ------------------------------------------------------------


@pytest.mark.parametrize(("h", "w"), [(16, 16), (32, 32), (8, 24), (20, 12), (4, 4)])
def test_output_shapes_for_any_input_size(h, w):
    model = tiny(num_register_tokens=3)
    x = torch.randn(2, 3, h, w)
    n = (h // 4) * (w // 4)
    out = model.forward_features(x)
    assert model(x).shape == (2, 24)
    assert out["x_norm_clstoken"].shape == (2, 24)
    assert out["x_norm_regtokens"].shape == (2, 3, 24)
    assert out["x_norm_patchtokens"].shape == (2, n, 24)
    assert out["x_prenorm"].shape == (2, 1 + 3 + n, 24)
    assert out["masks"] is None
    assert torch.equal(model(x), out["x_norm_clstoken"])


def test_bad_inputs_raise_data_errors():
    model = tiny()
    with pytest.raises(DataError, match="input size 18x16 is not a multiple of patch_size 4"):
        model(torch.randn(1, 3, 18, 16))
    with pytest.raises(DataError, match=r"built for input \(B, 3, H, W\) but got shape \(1, 5, 16, 16\)"):
        model(torch.randn(1, 5, 16, 16))


def _pos_from_tokens(model: VisionTransformer, h: int, w: int) -> torch.Tensor:
    """The positional embedding the model really adds, recovered from a zero image."""
    zeros = torch.zeros(1, model.in_chans, h, w)
    tokens = model.prepare_tokens(zeros)
    patch_bias = model.patch_embed.proj.bias.view(1, 1, -1)
    return torch.cat([tokens[:, :1] - model.cls_token, tokens[:, 1:] - patch_bias], dim=1)


@pytest.mark.parametrize(("rows", "cols"), [(5, 6), (12, 7), (3, 3)])
def test_interpolation_with_offset_matches_scale_factor_resize(rows, cols):
    model = tiny(img_size=32, interpolate_offset=0.1, interpolate_antialias=False)  # 8x8 grid
    with torch.no_grad():
        grid = model.pos_embed[:, 1:].reshape(1, 8, 8, 24).permute(0, 3, 1, 2)
        direct = F.interpolate(
            grid, scale_factor=((rows + 0.1) / 8, (cols + 0.1) / 8), mode="bicubic", antialias=False
        )
        expected = torch.cat([model.pos_embed[:, :1], direct.permute(0, 2, 3, 1).reshape(1, -1, 24)], 1)
        got = _pos_from_tokens(model, rows * 4, cols * 4)
        sized = F.interpolate(grid, size=(rows, cols), mode="bicubic", antialias=False)
    assert got.shape == (1, 1 + rows * cols, 24)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # the offset changes the sampling positions: a plain resize to (rows, cols) gives other values
    assert not torch.allclose(expected[:, 1:], sized.permute(0, 2, 3, 1).reshape(1, -1, 24), atol=1e-4)


@pytest.mark.parametrize(("rows", "cols"), [(5, 6), (12, 7)])
def test_interpolation_without_offset_matches_antialiased_size_resize(rows, cols):
    model = tiny(img_size=32, interpolate_offset=0.0, interpolate_antialias=True)
    with torch.no_grad():
        grid = model.pos_embed[:, 1:].reshape(1, 8, 8, 24).permute(0, 3, 1, 2)
        direct = F.interpolate(grid, size=(rows, cols), mode="bicubic", antialias=True)
        expected = torch.cat([model.pos_embed[:, :1], direct.permute(0, 2, 3, 1).reshape(1, -1, 24)], 1)
        got = _pos_from_tokens(model, rows * 4, cols * 4)
        no_aa = F.interpolate(grid, size=(rows, cols), mode="bicubic", antialias=False)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    if rows < 8:  # downsampling along rows: antialiasing matters
        assert not torch.allclose(direct, no_aa, atol=1e-4)


def test_native_grid_uses_pos_embed_unchanged():
    model = tiny()
    assert interpolate_pos_embed(model.pos_embed, 4, 4) is model.pos_embed
    torch.testing.assert_close(_pos_from_tokens(model, 16, 16), model.pos_embed, atol=1e-6, rtol=0)
    # a non-square grid with the same number of patches (2x8 vs 4x4) is interpolated
    assert not torch.allclose(_pos_from_tokens(model, 8, 32), model.pos_embed, atol=1e-4)


def test_registers_add_tokens_without_positional_embedding():
    x = torch.randn(2, 3, 16, 16)
    plain, with_regs = tiny(), tiny(num_register_tokens=4)
    assert plain.forward_features(x)["x_prenorm"].shape == (2, 17, 24)
    assert with_regs.forward_features(x)["x_prenorm"].shape == (2, 21, 24)
    assert plain.forward_features(x)["x_norm_regtokens"].shape == (2, 0, 24)
    tokens = with_regs.prepare_tokens(x)
    assert torch.equal(tokens[:, 1:5], with_regs.register_tokens.expand(2, -1, -1))
    assert torch.equal(tokens[:, 0], (with_regs.cls_token + with_regs.pos_embed[:, :1]).expand(2, 1, -1)[:, 0])
    patches = with_regs.patch_embed(x) + with_regs.pos_embed[:, 1:]
    assert torch.equal(tokens[:, 5:], patches)


def test_masks_replace_patch_tokens_with_mask_token():
    model = tiny(num_register_tokens=2)
    with torch.no_grad():
        model.mask_token.normal_()
    x = torch.randn(2, 3, 16, 16)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, [0, 5, 15]] = True
    masks[1, 3] = True
    tokens = model.prepare_tokens(x, masks)
    plain = model.prepare_tokens(x)
    patch_tokens, plain_patches = tokens[:, 3:], plain[:, 3:]
    expected_masked = model.mask_token + model.pos_embed[0, 1:][masks.nonzero()[:, 1]]
    assert torch.equal(patch_tokens[masks], expected_masked)
    assert torch.equal(patch_tokens[~masks], plain_patches[~masks])
    assert torch.equal(tokens[:, :3], plain[:, :3])

    out = model.forward_features(x, masks=masks)
    assert out["masks"] is masks
    # pixels under a masked patch no longer influence the tokens; pixels elsewhere do
    x_changed = x.clone()
    x_changed[0, :, 0:4, 0:4] += 5.0  # patch 0 of image 0 is masked
    torch.testing.assert_close(model.forward_features(x_changed, masks=masks)["x_prenorm"], out["x_prenorm"])
    x_changed[0, :, 0:4, 4:8] += 5.0  # patch 1 of image 0 is not
    assert not torch.allclose(model.forward_features(x_changed, masks=masks)["x_prenorm"], out["x_prenorm"])


def test_forward_features_on_a_list_of_crop_sizes():
    model = tiny(num_register_tokens=1)
    global_crops, local_crops = torch.randn(2, 3, 16, 16), torch.randn(3, 3, 8, 8)
    masks = torch.rand(2, 16) < 0.5
    outs = model.forward_features([global_crops, local_crops], masks=[masks, None])
    assert isinstance(outs, list) and len(outs) == 2
    assert outs[0]["x_norm_patchtokens"].shape == (2, 16, 24)
    assert outs[1]["x_norm_patchtokens"].shape == (3, 4, 24)
    assert torch.equal(outs[0]["x_prenorm"], model.forward_features(global_crops, masks)["x_prenorm"])
    assert torch.equal(outs[1]["x_norm_clstoken"], model(local_crops))
    with pytest.raises(ValueError, match="got 2 crop batches but 1 masks"):
        model.forward_features([global_crops, local_crops], masks=[masks])


def test_get_intermediate_layers():
    model = tiny(depth=3, num_register_tokens=2, layerscale_init=1.0)
    x = torch.randn(2, 3, 8, 12)
    feats = model.forward_features(x)
    outs = model.get_intermediate_layers(x, n=2, return_class_token=True)
    assert len(outs) == 2
    assert torch.equal(outs[-1][0], feats["x_norm_patchtokens"])
    assert torch.equal(outs[-1][1], feats["x_norm_clstoken"])
    assert not torch.allclose(outs[0][0], outs[1][0])
    (maps,) = model.get_intermediate_layers(x, n=[2], reshape=True)
    assert maps.shape == (2, 24, 2, 3)
    assert torch.equal(maps[:, :, 1, 2], feats["x_norm_patchtokens"][:, 1 * 3 + 2])
    (raw,) = model.get_intermediate_layers(x, n=1, norm=False)
    assert torch.equal(raw, feats["x_prenorm"][:, 3:])
    with pytest.raises(ValueError, match="out of range for a ViT of depth 3"):
        model.get_intermediate_layers(x, n=[3])


def test_drop_path_is_random_in_training_only():
    model = tiny(drop_path_rate=0.5, layerscale_init=1.0)
    assert model.blocks[-1].drop_path1.p == pytest.approx(0.5)
    assert isinstance(model.blocks[0].drop_path1, torch.nn.Identity)  # rate 0 for the first block
    x = torch.randn(8, 3, 16, 16)
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, model(x))


def test_backward_reaches_all_parameters():
    model = tiny(num_register_tokens=2, layerscale_init=1.0).train()
    masks = torch.rand(2, 16) < 0.3
    masks[0, 0] = True
    out = model.forward_features(torch.randn(2, 3, 16, 16), masks=masks)
    (out["x_norm_clstoken"].sum() + out["x_norm_patchtokens"].pow(2).sum()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


# --- attention backends --------------------------------------------------------------------------


def test_attention_backends_agree_with_a_hand_computation():
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1)
    expected = weights @ v
    for backend in ("math", "sdpa", "auto"):
        torch.testing.assert_close(attention(q, k, v, backend=backend), expected, atol=1e-5, rtol=0)
    probs = attention_probs(q, k)
    torch.testing.assert_close(probs, weights, atol=1e-6, rtol=0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, 7))


def test_sdpa_and_math_models_agree():
    model = tiny(layerscale_init=1.0, num_register_tokens=1, depth=3)
    x = torch.randn(2, 3, 16, 12)
    model.set_attention_backend("math")
    ref = model.forward_features(x)["x_prenorm"]
    model.set_attention_backend("sdpa")
    torch.testing.assert_close(model.forward_features(x)["x_prenorm"], ref, atol=1e-5, rtol=0)


def test_last_self_attention_matches_manual_computation():
    model = tiny(layerscale_init=1.0, num_register_tokens=2)
    x = torch.randn(2, 3, 8, 16)
    probs = model.get_last_self_attention(x)
    assert probs.shape == (2, 2, 11, 11)
    tokens = model.blocks[0](model.prepare_tokens(x))
    last = model.blocks[1]
    qkv = last.attn.qkv(last.norm1(tokens)).reshape(2, 11, 3, 2, 12)
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
    expected = torch.softmax(q @ k.transpose(-2, -1) * 12**-0.5, dim=-1)
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=0)


def test_explicit_xformers_on_cpu_raises():
    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(AttentionBackendError, match=r"backend 'xformers' needs CUDA tensors.*on 'cpu'"):
        attention(q, q, q, backend="xformers")
    assert issubclass(AttentionBackendError, ConfigError)
    model = tiny(attention="xformers")
    with pytest.raises(ConfigError, match="config key 'attention': backend 'xformers' needs CUDA"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(AttentionBackendError, match="unknown attention backend 'fast'"):
        attention(q, q, q, backend="fast")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only listing")
def test_available_backends_on_cpu():
    assert available_backends() == ["sdpa", "math"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_auto_backend_matches_math():
    device = torch.device("cuda")
    q, k, v = (torch.randn(2, 3, 50, 64, device=device) for _ in range(3))
    expected = attention(q, k, v, backend="math")
    torch.testing.assert_close(attention(q, k, v, backend="auto"), expected, atol=2e-3, rtol=0)
    if "xformers" in available_backends():
        torch.testing.assert_close(attention(q, k, v, backend="xformers"), expected, atol=2e-3, rtol=0)
    model = tiny(layerscale_init=1.0).to(device)
    x = torch.randn(2, 3, 16, 16, device=device)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
    model.set_attention_backend("math")
    with torch.no_grad():
        ref = model(x)
    assert (out.float() - ref).abs().max() < 0.1


def test_bf16_autocast_runs_and_is_close_to_fp32():
    model = tiny(layerscale_init=1.0, num_register_tokens=2)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            feats = model.forward_features([x, x[:, :, :8, :8]], masks=[torch.rand(2, 16) < 0.5, None])
            attn = model.get_last_self_attention(x)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    diff = (out.float() - ref).abs().max().item()
    assert 0 < diff < 0.1  # bf16 really used, and close
    assert feats[1]["x_norm_patchtokens"].shape == (2, 4, 24)
    torch.testing.assert_close(attn.float().sum(-1), torch.ones(2, 2, 19), atol=2e-2, rtol=0)
