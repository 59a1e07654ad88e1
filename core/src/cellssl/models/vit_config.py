"""The Vision Transformer's parameters (:class:`ViTConfig`, :data:`ARCHS`), importable without torch; the
model is :class:`cellssl.models.vit.VisionTransformer`."""

from __future__ import annotations

from dataclasses import dataclass

# names of the attention backends (cellssl.models.attention) and crop-packing modes (cellssl.models.packed)
BACKENDS: tuple[str, ...] = ("auto", "sdpa", "xformers", "math")
PACKING_MODES: tuple[str, ...] = ("auto", "grouped", "padded", "xformers", "off")


# arch -> (embed_dim, depth, num_heads)
ARCHS: dict[str, tuple[int, int, int]] = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}


@dataclass
class ViTConfig:
    """Parameters of a :class:`VisionTransformer` (the ``backbone`` block of a config).

    ``arch`` picks (embed_dim, depth, num_heads) from :data:`ARCHS`; ``embed_dim`` / ``depth`` /
    ``num_heads`` override them. ``img_size`` only sets the size of the stored positional-embedding
    grid (``img_size // patch_size`` per side); any input whose sides are multiples of ``patch_size``
    is accepted. ``layerscale_init`` None or 0 disables LayerScale. ``interpolate_offset`` 0.1 with
    ``interpolate_antialias`` False reproduces the original DINOv2 / cell models; 0.0 with True the
    ``_reg4`` models. ``attention`` is a backend of :mod:`cellssl.models.attention`. ``crop_packing`` is how a
    list of crop batches of different sizes (multi-crop training) goes through the blocks in one pass
    (:mod:`cellssl.models.packed`: ``auto``, ``grouped``, ``padded``, ``xformers``; ``off``: one pass per size).

    :raises ValueError: in ``__post_init__`` for an unknown arch or backend or an out-of-range value.
    """

    arch: str = "vit_small"
    patch_size: int = 16
    img_size: int = 224
    num_register_tokens: int = 0
    layerscale_init: float | None = 1.0e-5
    drop_path_rate: float = 0.0
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False
    attention: str = "auto"
    crop_packing: str = "auto"
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch: unknown ViT arch {self.arch!r}; choose one of {sorted(ARCHS)}")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        if self.img_size < self.patch_size or self.img_size % self.patch_size:
            raise ValueError(
                f"img_size ({self.img_size}) must be a positive multiple of patch_size ({self.patch_size})"
            )
        if self.num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, got {self.num_register_tokens}")
        if self.layerscale_init is not None and self.layerscale_init < 0:
            raise ValueError(f"layerscale_init must be None or >= 0, got {self.layerscale_init}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.interpolate_offset < 0:
            raise ValueError(f"interpolate_offset must be >= 0, got {self.interpolate_offset}")
        if self.attention not in BACKENDS:
            raise ValueError(f"attention: unknown backend {self.attention!r}; choose one of {list(BACKENDS)}")
        if self.crop_packing not in PACKING_MODES:
            raise ValueError(f"crop_packing: unknown mode {self.crop_packing!r}; choose one of {list(PACKING_MODES)}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        for key in ("embed_dim", "depth", "num_heads"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be None or >= 1, got {value}")
        dim, _, heads = self.dims()
        if dim % heads:
            raise ValueError(f"embed_dim ({dim}) must be divisible by num_heads ({heads})")

    def dims(self) -> tuple[int, int, int]:
        """``(embed_dim, depth, num_heads)`` after applying the overrides to the arch."""
        dim, depth, heads = ARCHS[self.arch]
        return (self.embed_dim or dim, self.depth or depth, self.num_heads or heads)
