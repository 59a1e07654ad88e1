"""How the backbone runs at embedding time: fp32, bf16 (weights cast once, or autocast per call), compiled or not.

:func:`prepare_for_inference` turns a backbone into the module an :class:`~cellssl.embed.embedder.Embedder` calls,
and says how to call it (:class:`Inference`: the input dtype and the context calls run in).

bf16 has two modes (``embed.bf16``):

- ``autocast``: fp32 weights; every call runs under ``torch.autocast`` (matmuls and convolutions in bf16, layer
  norms, softmax and the residual stream in fp32).
- ``cast``: the weights are cast to bf16 once (on a copy: the caller's backbone is left in fp32) and inputs are
  cast to bf16, so no per-call casts are made; every operation runs in bf16, so the numbers differ more from fp32
  than autocast's do (on a random ViT-S/8, cosine to fp32 >= 0.999 per embedding; see tests/test_embed_fast.py).
  On a CPU without native bf16 (no AVX512-BF16, no AMX), whose bf16 GEMMs are emulated and slow, calls run inside
  :class:`~cellssl.models.bf16.Fp32MatmulsForBf16`: matmuls, convolutions and attention take their bf16
  operands widened to fp32 and round the result to bf16 (the numbers of a native bf16 kernel up to the order of
  the sums; see that module).
- ``auto``: ``cast`` on every device: it was the faster mode everywhere it was measured (benchmarks/
  embed_throughput.py, ViT-S/8 at 64 px, 4 images per forward, one thread): 1.05-1.1x autocast on a CPU with
  AVX512-BF16, and 4-5x autocast on an AVX2-only CPU, where autocast's emulated bf16 GEMMs ran 7x slower than fp32
  while cast with fp32 matmuls ran at about 0.75x fp32. On CUDA casting avoids the per-call casts (not measured
  here: no GPU).

The two modes give different numbers, so the resolved mode is part of an embedding set's fingerprint
(:func:`numerics`): a table made one way is not read as the other.

``embed.compile: true`` wraps the module in ``torch.compile`` (inductor, with ``freezing``: weights become constants,
the setting PyTorch recommends for CPU inference). Inductor needs a working C++ compiler on CPU;
:func:`compile_unavailable` tries a tiny compiled function first, and when that fails the backbone runs eager with a
warning that names the reason. The first batch of each new shape pays the compilation (10-70 s on a 2-core CPU for
ViT-S, less when inductor's cache holds the kernels). On an AVX2-only CPU compiling gained nothing (the GEMMs
dominate: fp32 compiled ran 0.83-1.0x eager); see the benchmark's README paragraph.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cellssl.config.schema import BF16_MODES
from cellssl.models.bf16 import Fp32MatmulsForBf16, native_bf16

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class Inference:
    """A backbone prepared for inference and how to call it.

    :ivar module: the module to call (a bf16 copy for ``cast``, compiled for ``compile``; else the backbone).
    :ivar input_dtype: dtype inputs are cast to before the call (``torch.bfloat16`` for ``cast``).
    :ivar autocast: whether calls run under bf16 autocast.
    :ivar numerics: ``fp32``, ``bf16`` (autocast) or ``bf16-cast``: what the numbers depend on (see :func:`numerics`).
    :ivar compiled: whether ``module`` is compiled (``False`` also when compilation was asked for but unavailable).
    :ivar device: where the module runs.
    :ivar fp32_matmuls: whether calls widen bf16 matmuls to fp32 (``cast`` on a CPU without native bf16).
    """

    module: nn.Module
    input_dtype: torch.dtype
    autocast: bool
    numerics: str
    compiled: bool
    device: torch.device
    fp32_matmuls: bool = False

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` on the device, in the dtype the module takes."""
        return images.to(self.device, dtype=self.input_dtype, non_blocking=True)

    def context(self) -> contextlib.AbstractContextManager[Any]:
        """The context calls run in: bf16 autocast for the ``autocast`` mode, fp32 matmuls for ``cast`` on a CPU
        without native bf16, else nothing."""
        if self.autocast:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        if self.fp32_matmuls:
            return Fp32MatmulsForBf16()
        return contextlib.nullcontext()


def eager(backbone: nn.Module, precision: str, device: torch.device | str) -> Inference:
    """``backbone`` as it is (fp32 weights, not compiled), under autocast for ``precision="bf16"``."""
    device = torch.device(device)
    return Inference(backbone, torch.float32, precision == "bf16", "bf16" if precision == "bf16" else "fp32", False,
                     device)


def resolve_bf16_mode(mode: str, device: torch.device | str) -> str:
    """``cast`` or ``autocast``: the bf16 mode ``mode`` means on ``device`` (``auto`` means ``cast`` on every device
    since cast multiplies with fp32 units where bf16 is not native; see the module docstring).

    :raises ValueError: for a mode not in :data:`BF16_MODES`.
    """
    if mode not in BF16_MODES:
        raise ValueError(f"embed.bf16 must be one of {', '.join(BF16_MODES)}, got {mode!r}")
    return "cast" if mode == "auto" else mode


def numerics(precision: str, bf16_mode: str, device: torch.device | str) -> str:
    """The fingerprint's ``precision`` entry: ``fp32``, ``bf16`` (autocast) or ``bf16-cast``.

    The autocast label stays ``bf16`` so embedding sets written before bf16 casting existed keep their fingerprint.
    """
    if precision != "bf16":
        return precision
    return "bf16-cast" if resolve_bf16_mode(bf16_mode, device) == "cast" else "bf16"


def _probe(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x * 2.0 + 1.0).sum()


@functools.cache
def _compile_unavailable(device_type: str) -> str | None:
    try:
        compiled = torch.compile(_probe, backend="inductor", fullgraph=True)
        result = compiled(torch.ones(8, device=device_type))
        if float(result) != 24.0:
            return f"a compiled test function returned {float(result)} instead of 24.0"
    except Exception as exc:  # any failure to compile means: run eager
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"{type(exc).__name__}: {first[:300]}"
    return None


def compile_unavailable(device: torch.device | str) -> str | None:
    """``None`` when ``torch.compile`` (inductor) works on ``device``, else why not (one line).

    Compiles and runs a tiny function once per process and device type (a few seconds the first time).
    """
    return _compile_unavailable(torch.device(device).type)


_WARNED_SLOW_BF16: set[str] = set()


def _warn_slow_autocast(device: torch.device) -> None:
    """Warn, once per process, that bf16 autocast on this CPU runs emulated bf16 GEMMs."""
    if device.type == "cpu" and not native_bf16(device) and "cpu" not in _WARNED_SLOW_BF16:
        _WARNED_SLOW_BF16.add("cpu")
        logger.warning(
            "embed.bf16=autocast on a CPU without AVX512-BF16 or AMX: bf16 matmuls are emulated here and run "
            "3-10x slower than fp32 (benchmarks/embed_throughput.py measures it); set embed.bf16=cast (or auto), "
            "which multiplies bf16 operands with fp32 units, or embed.precision=fp32")


def prepare_for_inference(backbone: nn.Module, precision: str = "bf16", bf16: str = "auto", compile: bool = False,
                          device: torch.device | str = "cpu") -> Inference:
    """Prepare ``backbone`` (already in eval mode) for inference on ``device``.

    :param precision: ``fp32`` or ``bf16``.
    :param bf16: ``auto``, ``cast`` or ``autocast`` (used with ``precision="bf16"`` only).
    :param compile: wrap the module in ``torch.compile``; when inductor cannot compile here, a warning names the
        reason and the module runs eager (``Inference.compiled`` is then ``False``).
    :return: the module to call and how to call it. ``backbone`` itself is moved to ``device`` and not cast.
    :raises ValueError: for an unknown ``precision`` or ``bf16`` mode.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"embed.precision must be fp32 or bf16, got {precision!r}")
    device = torch.device(device)
    module = backbone.to(device).eval()
    mode = resolve_bf16_mode(bf16, device)
    input_dtype = torch.float32
    fp32_matmuls = False
    if precision == "bf16":
        if mode == "cast":
            module = copy.deepcopy(module).to(dtype=torch.bfloat16)
            input_dtype = torch.bfloat16
            fp32_matmuls = device.type == "cpu" and not native_bf16(device)
        else:
            _warn_slow_autocast(device)
    compiled = False
    if compile:
        reason = compile_unavailable(device)
        if reason is None:
            module = torch.compile(module, options={"freezing": True})  # weights as constants: prepacked GEMMs
            compiled = True
        else:
            logger.warning("embed.compile=true but torch.compile cannot run on %s here (%s); embedding runs eager. "
                           "Inductor needs a C++ compiler (g++ or clang++ on PATH, or $CXX) on CPU.",
                           device, reason)
    label = numerics(precision, bf16, device)
    logger.info("embedding inference: %s%s%s on %s", label, " (fp32 matmuls)" if fp32_matmuls else "",
                ", compiled" if compiled else "", device)
    return Inference(module, input_dtype, precision == "bf16" and mode == "autocast", label, compiled, device,
                     fp32_matmuls)

