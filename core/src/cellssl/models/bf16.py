"""bf16 on the hardware at hand: whether a device has native bf16 (:func:`native_bf16`), and bf16 matmuls computed
with fp32 units for CPUs without it (no AVX512-BF16, no AMX).

On such CPUs PyTorch's bf16 GEMM and convolution kernels are emulated and run several times slower than fp32
(ViT-S/8 at 64 px on an AVX2 CPU, one thread: a bf16 ``linear`` 7x slower than the fp32 one). Inside
:class:`Fp32MatmulsForBf16`, every matrix product, convolution and attention call whose floating-point operands
are all bf16 CPU tensors is computed instead on the operands widened to fp32, and its result rounded back to bf16.

The numbers are those of a native bf16 kernel, up to the order of the sums: the product of two bf16 values
(8-bit significands) is exact in fp32 (24 bits), native bf16 GEMMs accumulate in fp32 too, and the result is
rounded to bf16 either way. Everything else (layer norms, activations, the residual stream) stays bf16, so a model
whose weights were cast to bf16 keeps its bf16 memory footprint and its bf16 rounding between layers.

Used by ``embed.bf16: cast`` on CPUs without native bf16 (see :mod:`cellssl.embed.fast`); works eager and under
``torch.compile`` (the mode is traced like any other torch function mode). The trainer uses :func:`native_bf16` to
warn about ``train.precision: bf16`` on such CPUs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

# The operations whose bf16 CPU kernels are the slow ones: matrix products, convolutions and attention.
WIDENED_OPS: frozenset[Callable[..., Any]] = frozenset({
    F.linear, F.bilinear, F.conv1d, F.conv2d, F.conv3d, F.scaled_dot_product_attention,
    torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.baddbmm, torch.einsum,
    torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.Tensor.mm, torch.Tensor.bmm,
})


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` has native bf16 matmuls: CUDA, or a CPU with AVX512-BF16 or AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def _floating_tensors(values: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    for value in values:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            found.append(value)
        elif isinstance(value, list | tuple):
            found.extend(_floating_tensors(value))
    return found


def _widen(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16:
        return value.float()
    if isinstance(value, list | tuple):
        return type(value)(_widen(v) for v in value)
    return value


def all_bf16_on_cpu(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether the floating-point tensors among ``args`` and ``kwargs`` (lists included) exist and are all bf16
    CPU tensors: the calls :class:`Fp32MatmulsForBf16` widens (mixed dtypes are left to PyTorch)."""
    tensors = _floating_tensors((*args, *kwargs.values()))
    return bool(tensors) and all(t.dtype == torch.bfloat16 and t.device.type == "cpu" for t in tensors)


class Fp32MatmulsForBf16(TorchFunctionMode):
    """Within this mode, the :data:`WIDENED_OPS` called on bf16 CPU tensors run in fp32 and return bf16.

    Calls on other dtypes or devices, and every other operation, run unchanged.
    """

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func in WIDENED_OPS and all_bf16_on_cpu(args, kwargs):
            out = func(*_widen(args), **{key: _widen(value) for key, value in kwargs.items()})
            return out.to(torch.bfloat16) if isinstance(out, torch.Tensor) else out
        return func(*args, **kwargs)
