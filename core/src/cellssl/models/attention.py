"""Scaled dot-product attention with interchangeable backends.

Layout: ``q``, ``k``, ``v`` are ``(B, heads, N, head_dim)`` tensors (the layout of
:func:`torch.nn.functional.scaled_dot_product_attention`); the output has the same layout.

Backends:

- ``"sdpa"``: :func:`torch.nn.functional.scaled_dot_product_attention` (CPU and GPU).
- ``"xformers"``: ``xformers.ops.memory_efficient_attention``; CUDA tensors only.
- ``"math"``: the explicit ``softmax(q k^T / sqrt(d)) v``, for tests and attention maps.
- ``"auto"``: xformers when the tensors are on CUDA and xformers imports and runs, else SDPA. On CPU
  xformers is never imported.

Choosing ``"xformers"`` for tensors that are not on CUDA, or when xformers is not usable, raises
:class:`AttentionBackendError` (a :class:`cellssl.errors.ConfigError`).
"""

from __future__ import annotations

import functools
import logging
import math
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from cellssl.errors import ConfigError
from cellssl.models.vit_config import BACKENDS

logger = logging.getLogger(__name__)


# (dtype, head_dim) combinations for which xformers failed on CUDA; "auto" then uses SDPA for them.
_XFORMERS_FAILED: set[tuple[torch.dtype, int]] = set()


class AttentionBackendError(ConfigError):
    """The requested attention backend cannot run here (config key ``attention``)."""

    def __init__(self, message: str) -> None:
        super().__init__("attention", message)


@functools.cache
def _xformers_ops() -> ModuleType | None:
    """``xformers.ops`` if it imports, else ``None`` (the reason is logged once at debug level)."""
    try:
        import xformers.ops as xops
    except Exception as exc:  # ImportError, or a broken build raising something else
        logger.debug("xformers is not usable: %s", exc)
        return None
    if not hasattr(xops, "memory_efficient_attention"):
        return None
    return xops


def available_backends() -> list[str]:
    """Backends that can run on this machine, best first.

    ``"xformers"`` is listed only when CUDA is available and xformers imports (whether its kernels
    support a given dtype / head size is only known at the first call). ``"sdpa"`` and ``"math"``
    are always available.
    """
    names = ["sdpa", "math"]
    if torch.cuda.is_available() and _xformers_ops() is not None:
        names.insert(0, "xformers")
    return names


def _check_backend_name(backend: str) -> None:
    if backend not in BACKENDS:
        raise AttentionBackendError(f"unknown attention backend {backend!r}; choose one of {list(BACKENDS)}")


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "attention expects q, k, v of shape (B, heads, N, head_dim); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )


def attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Attention probabilities ``softmax(q k^T * scale)`` of shape ``(B, heads, N_q, N_k)``.

    :param q: ``(B, heads, N_q, head_dim)`` queries.
    :param k: ``(B, heads, N_k, head_dim)`` keys.
    :param scale: logit scale; default ``1 / sqrt(head_dim)``.
    :return: probabilities (rows sum to 1), softmax computed in float32, returned in ``q``'s dtype.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    logits = (q * scale) @ k.transpose(-2, -1)
    return logits.softmax(dim=-1, dtype=torch.float32).to(q.dtype)


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The explicit ``softmax(q k^T * scale) v``; same layout and result as :func:`attention`."""
    return attention_probs(q, k, scale).to(v.dtype) @ v


def _xformers_attention(
    xops: ModuleType, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None
) -> torch.Tensor:
    # xformers uses (B, N, heads, head_dim); autocast does not cover it, so align dtypes ourselves.
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else q.dtype
    q, k, v = (t.transpose(1, 2).to(dtype) for t in (q, k, v))
    out = xops.memory_efficient_attention(q, k, v, scale=scale)
    return out.transpose(1, 2)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    backend: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention (no mask, no dropout).

    :param q: ``(B, heads, N_q, head_dim)`` queries.
    :param k: ``(B, heads, N_k, head_dim)`` keys.
    :param v: ``(B, heads, N_k, head_dim)`` values.
    :param backend: one of :data:`BACKENDS` (see the module docstring).
    :param scale: logit scale; default ``1 / sqrt(head_dim)``.
    :return: ``(B, heads, N_q, head_dim)``.
    :raises AttentionBackendError: for an unknown backend, or ``"xformers"`` requested for tensors that
        are not on CUDA or when xformers cannot run them.
    :raises ValueError: if the inputs are not 4-dimensional.
    """
    _check_backend_name(backend)
    _check_shapes(q, k, v)
    if backend == "math":
        return math_attention(q, k, v, scale)
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, scale=scale)

    on_cuda = q.device.type == "cuda"
    if backend == "xformers":
        if not on_cuda:
            raise AttentionBackendError(
                f"backend 'xformers' needs CUDA tensors but the tensors are on '{q.device.type}'; "
                "use attention 'auto' (SDPA off CUDA) or 'sdpa'"
            )
        xops = _xformers_ops()
        if xops is None:
            raise AttentionBackendError(
                "backend 'xformers' was requested but xformers does not import; install a build matching "
                f"torch {torch.__version__} or use attention 'auto' / 'sdpa'"
            )
        try:
            return _xformers_attention(xops, q, k, v, scale)
        except NotImplementedError as exc:
            raise AttentionBackendError(
                f"xformers has no kernel for these inputs (dtype {q.dtype}, head_dim {q.shape[-1]}): "
                f"{str(exc).splitlines()[0]}; use attention 'auto' or 'sdpa'"
            ) from exc

    # auto
    key = (q.dtype, int(q.shape[-1]))
    if on_cuda and key not in _XFORMERS_FAILED:
        xops = _xformers_ops()
        if xops is not None:
            try:
                return _xformers_attention(xops, q, k, v, scale)
            except (NotImplementedError, ValueError) as exc:  # no kernel for these inputs
                _XFORMERS_FAILED.add(key)
                logger.warning(
                    "xformers cannot run attention for dtype %s, head_dim %d (%s); using SDPA instead",
                    q.dtype,
                    q.shape[-1],
                    str(exc).splitlines()[0],
                )
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


class Attention(nn.Module):
    """Multi-head self-attention over ``(B, N, dim)`` tokens (DINOv2 keys ``qkv``, ``proj``);
    ``backend`` is a name from :data:`BACKENDS`, read at every call."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, backend: str) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.backend = backend

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self._qkv(x)
        out = attention(q, k, v, backend=self.backend)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Attention probabilities ``(B, heads, N, N)`` for the (already normalised) tokens ``x``."""
        q, k, _ = self._qkv(x)
        return attention_probs(q, k)
