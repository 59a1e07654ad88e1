"""bf16 matmuls with fp32 units (cellssl.models.bf16): which calls are widened, and their numbers.

A bf16 x bf16 product is exact in fp32, so a widened matmul differs from the exactly rounded (float64) result by
fp32 summation error only: at most one bf16 unit in the last place, and on almost no element.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from cellssl.models.bf16 import WIDENED_OPS, Fp32MatmulsForBf16, all_bf16_on_cpu


class _Recorder(TorchFunctionMode):
    """Records the dtypes of the tensor arguments of every call that reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Callable[..., Any], tuple[torch.dtype, ...]]] = []

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        dtypes = tuple(a.dtype for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
        self.calls.append((func, dtypes))
        return func(*args, **kwargs)


def _bf16_ulp(values: torch.Tensor) -> torch.Tensor:
    """The spacing of bf16 numbers at ``values`` (8 significand bits)."""
    exponent = torch.floor(torch.log2(values.abs().clamp_min(1e-30)))
    return torch.pow(2.0, exponent - 7)


@pytest.fixture
def operands() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(37, 96, generator=gen).bfloat16()
    w = torch.randn(53, 96, generator=gen).bfloat16()
    b = torch.randn(53, generator=gen).bfloat16()
    return x, w, b


def test_a_widened_linear_is_the_fp32_product_of_the_bf16_operands_rounded_to_bf16(
        operands: tuple[torch.Tensor, ...]) -> None:
    x, w, b = operands
    recorder = _Recorder()
    with recorder, Fp32MatmulsForBf16():
        out = F.linear(x, w, b)
    assert out.dtype == torch.bfloat16 and out.shape == (37, 53)
    # the call that reached the kernels below the mode had fp32 operands
    assert [dtypes for func, dtypes in recorder.calls if func is F.linear] == [(torch.float32,) * 3]
    torch.testing.assert_close(out, F.linear(x.float(), w.float(), b.float()).bfloat16(), rtol=0, atol=0)
    exact = F.linear(x.double(), w.double(), b.double())
    error = (out.double() - exact).abs()
    assert bool((error <= _bf16_ulp(exact.float()).double()).all())  # within one bf16 ulp everywhere
    assert float((error > 0.5 * _bf16_ulp(exact.float()).double()).float().mean()) < 0.01  # rounded right almost always


def test_matmul_operators_convolution_and_attention_are_widened() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(2, 5, 8, generator=gen).bfloat16()
    c = torch.randn(2, 8, 3, generator=gen).bfloat16()
    image = torch.randn(1, 2, 9, 9, generator=gen).bfloat16()
    kernel = torch.randn(4, 2, 3, 3, generator=gen).bfloat16()
    q = torch.randn(1, 2, 6, 8, generator=gen).bfloat16()
    cases = {
        "@": (lambda: a @ c, lambda: (a.float() @ c.float())),
        "bmm": (lambda: torch.bmm(a, c), lambda: torch.bmm(a.float(), c.float())),
        "conv2d": (lambda: F.conv2d(image, kernel), lambda: F.conv2d(image.float(), kernel.float())),
        "sdpa": (lambda: F.scaled_dot_product_attention(q, q, q),
                 lambda: F.scaled_dot_product_attention(q.float(), q.float(), q.float())),
    }
    for name, (widened, fp32) in cases.items():
        with Fp32MatmulsForBf16():
            out = widened()
        assert out.dtype == torch.bfloat16, name
        torch.testing.assert_close(out, fp32().bfloat16(), rtol=0, atol=0, msg=name)


def test_other_dtypes_mixed_calls_and_other_operations_run_unchanged(
        operands: tuple[torch.Tensor, ...]) -> None:
    x, w, b = operands
    recorder = _Recorder()
    with recorder, Fp32MatmulsForBf16():
        fp32 = F.linear(x.float(), w.float())
        norm = F.layer_norm(x, (96,))
        gelu = F.gelu(x)
    assert fp32.dtype == torch.float32 and norm.dtype == torch.bfloat16 and gelu.dtype == torch.bfloat16
    reached = {func: dtypes for func, dtypes in recorder.calls}
    assert reached[F.layer_norm] == (torch.bfloat16,) and reached[F.gelu] == (torch.bfloat16,)
    assert F.layer_norm not in WIDENED_OPS and F.linear in WIDENED_OPS
    assert all_bf16_on_cpu((x, w), {"bias": b}) and not all_bf16_on_cpu((x, w.float()), {})
    assert not all_bf16_on_cpu((3, "a"), {}) and all_bf16_on_cpu(([x, w],), {})


def test_native_bf16_is_cuda_or_a_cpu_with_avx512_bf16_or_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    from cellssl.models.bf16 import native_bf16

    assert native_bf16("cuda") and not native_bf16("meta")
    for avx512_bf16, amx in ((False, False), (True, False), (False, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert native_bf16("cpu") == (avx512_bf16 or amx)


def test_under_cpu_bf16_autocast_matmuls_take_bf16_rounded_operands_and_run_in_fp32(
        operands: tuple[torch.Tensor, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    from cellssl.models import bf16

    monkeypatch.setattr(bf16, "native_bf16", lambda device: False)
    x, w, b = (t.float().requires_grad_() for t in operands)
    recorder = _Recorder()
    with recorder, bf16.bf16_autocast("cpu"):
        out = F.linear(x, w, b)
        assert torch.is_autocast_enabled("cpu")
    assert out.dtype == torch.bfloat16  # what autocast returns
    # below the mode the call had fp32 operands (the bf16-rounded values), with autocast off
    assert [dtypes for func, dtypes in recorder.calls if func is F.linear] == [(torch.float32,) * 3]
    rounded = [t.detach().bfloat16().float() for t in (x, w, b)]
    torch.testing.assert_close(out, F.linear(*rounded).bfloat16(), rtol=0, atol=0)
    out.float().sum().backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the same through PyTorch's own bf16 kernels
        x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, w, b))
        native = F.linear(x2, w2, b2)
    native.float().sum().backward()
    torch.testing.assert_close(out, native, rtol=2**-7, atol=1e-6)  # at most one bf16 rounding apart
    for mine, theirs in ((x.grad, x2.grad), (w.grad, w2.grad), (b.grad, b2.grad)):
        assert mine.dtype == torch.float32
        torch.testing.assert_close(mine, theirs, rtol=2**-7, atol=1e-5)  # gradients rounded to bf16 like autocast's


def test_bf16_autocast_is_plain_autocast_where_bf16_is_native(monkeypatch: pytest.MonkeyPatch) -> None:
    from cellssl.models import bf16

    monkeypatch.setattr(bf16, "native_bf16", lambda device: True)
    context = bf16.bf16_autocast("cpu")
    assert isinstance(context, torch.autocast)
    with warnings.catch_warnings():  # "CUDA is not available": the context is only built here, not entered
        warnings.simplefilter("ignore", UserWarning)
        assert isinstance(bf16.bf16_autocast("cuda"), torch.autocast)
    monkeypatch.setattr(bf16, "native_bf16", lambda device: False)
    assert not isinstance(bf16.bf16_autocast("cpu"), torch.autocast)
    # outside autocast, fp32 calls are left alone; inside it, ops autocast keeps in fp32 stay fp32
    with Fp32MatmulsForBf16():
        assert F.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.float32
    with bf16.bf16_autocast("cpu"):
        assert F.layer_norm(torch.ones(2, 3), (3,)).dtype == torch.float32
        assert torch.einsum("ij,kj->ik", torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.bfloat16  # autocast's


def test_a_bf16_training_step_on_fp32_units_matches_one_on_the_bf16_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    from cellssl.models import bf16
    from cellssl.models.vit import ViTConfig, build_vit

    config = ViTConfig(arch="vit_tiny", patch_size=8, img_size=32, embed_dim=32, depth=2, num_heads=2,
                       layerscale_init=None)
    images = torch.rand(6, 2, 32, 32, generator=torch.Generator().manual_seed(2))
    steps = {}
    for native in (True, False):
        torch.manual_seed(0)
        vit = build_vit(config, in_chans=2)
        monkeypatch.setattr(bf16, "native_bf16", lambda device, native=native: native)
        with bf16.bf16_autocast("cpu"):
            out = vit(images)
        out.float().pow(2).mean().backward()
        steps[native] = (out.detach().float(), {n: p.grad.clone() for n, p in vit.named_parameters()
                                                if p.grad is not None})
    (out_kernels, grads_kernels), (out_fp32, grads_fp32) = steps[True], steps[False]
    assert F.cosine_similarity(out_kernels, out_fp32).min() >= 0.9999
    for name, grad in grads_kernels.items():
        cosine = F.cosine_similarity(grad.flatten(), grads_fp32[name].flatten(), dim=0)
        assert cosine >= 0.999, (name, float(cosine))


def test_the_training_step_benchmark_prints_its_table(run_benchmark: Any) -> None:
    import re

    out = run_benchmark("bf16_train_step", "--arch", "vit_tiny", "--size", "16", "--batch", "2", "--repeats", "1")
    rows = re.findall(r"^(fp32|bf16 autocast on [^\n]*?)\s+([\d.]+)\s+([\d.]+)x$", out, re.MULTILINE)
    assert [r[0] for r in rows] == ["fp32", "bf16 autocast on fp32 units (train.precision: bf16 here)",
                                    "bf16 autocast on PyTorch's bf16 kernels"] and rows[0][2] == "1.00"
    cosine = float(re.search(r"smallest gradient cosine between them ([\d.]+)", out).group(1))
    assert 0.99 <= cosine <= 1.0


def test_autocast_rounds_fp32_operands_to_bf16_passes_keywords_and_leaves_float64_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cellssl.models import bf16

    monkeypatch.setattr(bf16, "native_bf16", lambda device: False)
    gen = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(9, 24, generator=gen), torch.randn(7, 24, generator=gen), torch.randn(7, generator=gen)
    assert not torch.equal(x, x.bfloat16().float())  # fp32 values that bf16 cannot hold
    with bf16.bf16_autocast("cpu"):
        out = F.linear(x, w, bias=b)  # the bias as a keyword
        double = F.linear(x.double(), w.double())
    expected = F.linear(x.bfloat16().float(), w.bfloat16().float(), b.bfloat16().float()).bfloat16()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert double.dtype == torch.float64  # autocast does not cast float64, nor does the mode
    xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
    with Fp32MatmulsForBf16():
        widened = F.linear(xb, wb, bias=bb)
    torch.testing.assert_close(widened, F.linear(xb.float(), wb.float(), bb.float()).bfloat16(), rtol=0, atol=0)


def test_bf16_autocast_asks_about_its_device_and_uses_bf16_whatever_the_default_autocast_dtype(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cellssl.models import bf16

    asked: list[object] = []
    monkeypatch.setattr(bf16, "native_bf16", lambda device: asked.append(device) or True)
    default = torch.get_autocast_dtype("cpu")
    torch.set_autocast_dtype("cpu", torch.float16)  # a changed default must not leak in
    try:
        with bf16.bf16_autocast("cpu"):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    finally:
        torch.set_autocast_dtype("cpu", default)
    assert asked == [torch.device("cpu")]


def test_native_bf16_is_false_where_torch_cannot_tell(monkeypatch: pytest.MonkeyPatch) -> None:
    from cellssl.models.bf16 import native_bf16

    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert native_bf16("cpu") is False
