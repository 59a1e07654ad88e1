"""bf16 on the hardware at hand: whether a device has native bf16 (:func:`native_bf16`), and bf16 matmuls computed
with fp32 units for CPUs without it (no AVX512-BF16, no AMX).

On such CPUs PyTorch's bf16 GEMM and convolution kernels are emulated and run several times slower than fp32
(ViT-S/8 at 64 px on an AVX2 CPU, one thread: a bf16 ``linear`` 7x slower than the fp32 one, a bf16-autocast
training step 14x slower than fp32; benchmarks/bf16_train_step.py). Inside :class:`Fp32MatmulsForBf16`, every matrix
product, convolution and attention call whose floating-point operands are all bf16 CPU tensors is computed instead
on the operands widened to fp32, and its result rounded back to bf16. Under CPU bf16 autocast
(:func:`bf16_autocast`), the calls autocast would run in bf16 have their operands rounded to bf16 (as autocast casts
them), multiplied in fp32 with autocast off, and their result rounded to bf16; their backward passes run in fp32 on
the same bf16-rounded values, and the gradients are rounded to bf16 where autocast's would be (at the casts).

The numbers are those of a native bf16 kernel, up to the order of the sums: the product of two bf16 values
(8-bit significands) is exact in fp32 (24 bits), native bf16 GEMMs accumulate in fp32 too, and the result is
rounded to bf16 either way. Everything else (layer norms, activations, the residual stream) stays bf16, so a model
whose weights were cast to bf16 keeps its bf16 memory footprint and its bf16 rounding between layers.

Used by ``embed.bf16: cast`` on CPUs without native bf16 (see :mod:`cellssl.embed.fast`) and by the trainer's bf16
autocast there (``train.precision: bf16``); works eager and under ``torch.compile`` (the mode is traced like any
other torch function mode).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
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


# The operations of WIDENED_OPS that CPU autocast runs in bf16 (its lower-precision list); under autocast the others
# keep autocast's own handling.
AUTOCAST_WIDENED_OPS: frozenset[Callable[..., Any]] = frozenset({
    F.linear, F.conv1d, F.conv2d, F.conv3d, F.scaled_dot_product_attention,
    torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.baddbmm,
    torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.Tensor.mm, torch.Tensor.bmm,
})
_AUTOCAST_CASTS = (torch.float32, torch.bfloat16)


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


def _round_to_bf16_and_widen(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype in _AUTOCAST_CASTS:
        return value.to(torch.bfloat16).float()
    if isinstance(value, list | tuple):
        return type(value)(_round_to_bf16_and_widen(v) for v in value)
    return value


def _under_cpu_bf16_autocast(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether CPU bf16 autocast is on and would cast this call: floating operands, all fp32 / bf16 CPU tensors."""
    if not (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16):
        return False
    tensors = _floating_tensors((*args, *kwargs.values()))
    return bool(tensors) and all(t.dtype in _AUTOCAST_CASTS and t.device.type == "cpu" for t in tensors)


def all_bf16_on_cpu(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether the floating-point tensors among ``args`` and ``kwargs`` (lists included) exist and are all bf16
    CPU tensors: the calls :class:`Fp32MatmulsForBf16` widens (mixed dtypes are left to PyTorch)."""
    tensors = _floating_tensors((*args, *kwargs.values()))
    return bool(tensors) and all(t.dtype == torch.bfloat16 and t.device.type == "cpu" for t in tensors)


class Fp32MatmulsForBf16(TorchFunctionMode):
    """Within this mode, the :data:`WIDENED_OPS` called on bf16 CPU tensors run in fp32 and return bf16; under CPU
    bf16 autocast, the :data:`AUTOCAST_WIDENED_OPS` on fp32 / bf16 CPU tensors take their operands rounded to bf16,
    run in fp32 with autocast off and return bf16 (what autocast returns).

    Calls on other dtypes or devices, and every other operation, run unchanged.
    """

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func in AUTOCAST_WIDENED_OPS and _under_cpu_bf16_autocast(args, kwargs):
            with torch.autocast("cpu", enabled=False):
                out = func(*_round_to_bf16_and_widen(args),
                           **{key: _round_to_bf16_and_widen(value) for key, value in kwargs.items()})
            return out.to(torch.bfloat16)  # every widened op returns one tensor
        if func in WIDENED_OPS and all_bf16_on_cpu(args, kwargs):
            out = func(*_widen(args), **{key: _widen(value) for key, value in kwargs.items()})
            return out.to(torch.bfloat16)  # every widened op returns one tensor
        return func(*args, **kwargs)


def bf16_autocast(device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device``; on a CPU without native bf16, with :class:`Fp32MatmulsForBf16` active too, so
    autocast's bf16 matmuls run on fp32 units."""
    device = torch.device(device)
    if device.type != "cpu" or native_bf16(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return autocast_on_fp32_units()


@contextlib.contextmanager
def autocast_on_fp32_units() -> Iterator[None]:
    """CPU bf16 autocast with :class:`Fp32MatmulsForBf16` active (whatever the CPU has)."""
    with torch.autocast("cpu", dtype=torch.bfloat16), Fp32MatmulsForBf16():
        yield
