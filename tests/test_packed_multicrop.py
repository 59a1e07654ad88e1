"""One student pass over global and local crops (packed sequences) equals the per-crop-size loop.

Tolerance: fp32 on CPU, features and losses within 1e-5 absolute (observed ~1e-6: only the summation order
of the matrix products differs), gradients within 1e-4 absolute / 1e-3 relative.
"""

from __future__ import annotations

import copy
import types
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cellssl.models import packed
from cellssl.models.packed import PackedLayout, pack, resolve_mode, unpack
from cellssl.models.vit import ViTConfig, build_vit
from cellssl.objectives.dino import HeadConfig
from cellssl.objectives.dinov2 import DINOv2Config, DINOv2Objective
from cellssl.objectives.masking import BlockMaskingGenerator, sample_masks

ATOL = 1e-5


def _vit(mode: str, **kwargs: Any) -> Any:
    torch.manual_seed(0)
    config = ViTConfig(arch="vit_tiny", patch_size=4, img_size=16, embed_dim=32, depth=3, num_heads=4,
                       layerscale_init=0.5, num_register_tokens=2, crop_packing=mode, **kwargs)
    return build_vit(config, in_chans=3)


def _crops() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    global_crops = torch.randn(4, 3, 16, 16)
    local_crops = torch.randn(6, 3, 8, 8)
    masks = torch.zeros(4, 16, dtype=torch.bool)
    masks[0, :5] = True
    masks[2, 3:9] = True
    return global_crops, local_crops, masks


@pytest.mark.parametrize("mode", ["grouped", "padded"])
def test_packed_vit_features_and_gradients_equal_the_per_crop_loop(mode: str) -> None:
    global_crops, local_crops, masks = _crops()
    loop, packed_vit = _vit("off"), _vit(mode)
    outs, calls = [], []
    for model in (loop, packed_vit):
        count = [0]
        hooks = [blk.register_forward_pre_hook(lambda *_, c=count: c.__setitem__(0, c[0] + 1)) for blk in model.blocks]
        feats = model.forward_features([global_crops, local_crops], masks=[masks, None])
        calls.append(count[0])
        for hook in hooks:
            hook.remove()
        loss = (feats[0]["x_norm_clstoken"].pow(2).sum() + feats[1]["x_norm_clstoken"].sin().sum()
                + feats[0]["x_norm_patchtokens"][masks].sum())
        loss.backward()
        outs.append((feats, loss))
    (a, loss_a), (b, loss_b) = outs
    assert calls == [2 * 3, 3]  # the loop runs each of the 3 blocks once per crop size, packing once in all
    for fa, fb in zip(a, b):
        for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm"):
            assert fa[key].shape == fb[key].shape
            torch.testing.assert_close(fb[key], fa[key], atol=ATOL, rtol=0)
    assert b[0]["masks"] is masks and b[1]["masks"] is None
    assert b[1]["x_norm_patchtokens"].shape == (6, 4, 32)
    torch.testing.assert_close(loss_b, loss_a, atol=ATOL, rtol=0)
    for (name, pa), pb in zip(loop.named_parameters(), packed_vit.parameters()):
        if pa.grad is None:
            assert pb.grad is None, name
            continue
        torch.testing.assert_close(pb.grad, pa.grad, atol=1e-4, rtol=1e-3, msg=name)


def test_dinov2_loss_with_one_student_pass_equals_the_loop() -> None:
    config = DINOv2Config(head=HeadConfig(out_dim=64, hidden_dim=32, bottleneck_dim=16, nlayers=2, use_bn=True))
    config.multicrop.global_size, config.multicrop.local_size, config.multicrop.n_local = 16, 8, 3

    def factory() -> Any:
        return _vit("off")

    torch.manual_seed(0)
    loop = DINOv2Objective(config, factory).train()
    fused = copy.deepcopy(loop)
    fused.student.backbone.crop_packing = "grouped"
    global_crops, _, _ = _crops()
    local_crops = torch.randn(6, 3, 8, 8)  # 3 local views x 2 images; 2 global views x 2 images
    grid_masks = sample_masks(4, 4, (0.1, 0.5), 0.5, np.random.default_rng(0),
                              BlockMaskingGenerator(4, 4, max_num_patches=8))
    batch = {"global": global_crops, "local": local_crops, "masks": grid_masks}
    calls = {"loop": 0, "fused": 0}
    for name, objective in (("loop", loop), ("fused", fused)):
        objective.student.backbone.blocks[0].register_forward_pre_hook(
            lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    out_loop = loop(batch, teacher_temp=0.05)
    out_fused = fused(batch, teacher_temp=0.05)
    assert calls == {"loop": 2, "fused": 1}  # one student pass over global and local crops
    assert bool(grid_masks.any())
    for key, value in out_loop.terms.items():
        torch.testing.assert_close(out_fused.terms[key], value, atol=ATOL, rtol=0, msg=key)
    out_loop.loss.backward()
    out_fused.loss.backward()
    for (name, pa), pb in zip(loop.student.named_parameters(), fused.student.parameters()):
        if pa.grad is not None:
            torch.testing.assert_close(pb.grad, pa.grad, atol=1e-4, rtol=1e-3, msg=name)


def test_xformers_block_diagonal_path_uses_the_right_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA path's layout logic, checked on CPU: a stand-in for xformers' kernel applies the real
    ``BlockDiagonalMask`` (materialised as a dense bias) with SDPA; the result must equal the per-crop loop."""
    pytest.importorskip("xformers.ops.fmha")

    def memory_efficient_attention(q: Any, k: Any, v: Any, attn_bias: Any = None) -> Any:
        bias = attn_bias.materialize((q.shape[1], k.shape[1]), dtype=q.dtype)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=bias)
        return out.transpose(1, 2)

    monkeypatch.setattr(packed, "_xformers_ops",
                        lambda: types.SimpleNamespace(memory_efficient_attention=memory_efficient_attention))
    global_crops, local_crops, masks = _crops()
    with torch.no_grad():
        a = _vit("off").forward_features([global_crops, local_crops], masks=[masks, None])
        b = _vit("xformers").forward_features([global_crops, local_crops], masks=[masks, None])
    for fa, fb in zip(a, b):
        torch.testing.assert_close(fb["x_norm_clstoken"], fa["x_norm_clstoken"], atol=ATOL, rtol=0)
        torch.testing.assert_close(fb["x_norm_patchtokens"], fa["x_norm_patchtokens"], atol=ATOL, rtol=0)
    mask = packed.xformers_block_diagonal_mask(PackedLayout(((2, 3), (1, 2))))
    dense = mask.materialize((8, 8))
    assert torch.equal(torch.isfinite(dense), torch.block_diag(torch.ones(3, 3), torch.ones(3, 3),
                                                               torch.ones(2, 2)).bool())


def test_pack_layout_and_stochastic_depth_per_crop() -> None:
    tokens = [torch.randn(2, 5, 4), torch.randn(3, 2, 4)]
    x, layout = pack(tokens)
    assert x.shape == (1, 16, 4) and layout.groups == ((2, 5), (3, 2)) and layout.total == 16
    assert layout.seqlens == [5, 5, 2, 2, 2]
    assert all(torch.equal(a, b) for a, b in zip(unpack(x, layout), tokens))
    drop = types.SimpleNamespace(p=0.5, training=True)
    torch.manual_seed(0)
    big = PackedLayout(((200, 3), (300, 2)))
    out = packed._drop_path(torch.ones(1, big.total, 1), drop, big)  # type: ignore[arg-type]
    per_crop = list(torch.split(out.flatten(), big.seqlens))
    assert all(bool((c == c[0]).all()) for c in per_crop)  # one draw per crop, shared by its tokens
    values = torch.stack([c[0] for c in per_crop])
    assert set(values.unique().tolist()) <= {0.0, 2.0}
    assert 0.4 < float((values == 0).float().mean()) < 0.6


def test_mode_resolution_and_config_errors() -> None:
    assert resolve_mode("auto", torch.device("cpu"), "auto") == "grouped"
    assert resolve_mode("padded", torch.device("cpu"), "auto") == "padded"
    with pytest.raises(ValueError, match="unknown crop packing mode 'nested'"):
        resolve_mode("nested", torch.device("cpu"), "auto")
    with pytest.raises(ValueError, match="crop_packing: unknown mode 'loop'"):
        ViTConfig(crop_packing="loop")
