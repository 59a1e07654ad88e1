"""Model cards: a released model by name, with everything needed to run it as its authors did.

A :class:`ModelCard` is registered under component kind ``model`` (hook ``cellssl_register_models``) with
:func:`add_card`; :func:`get_card` looks one up (an unknown name lists the cards and suggests the closest).
:func:`weights_path` is where a card's weights file lives: ``$CELLSSL_HOME/models/<name>/<file_name>``, with
``CELLSSL_HOME`` defaulting to the user's cache folder (``$XDG_CACHE_HOME/cellssl`` or ``~/.cache/cellssl``).
This module imports no torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellssl.data.vocabulary import canonical_channel_name

HOME_ENV = "CELLSSL_HOME"


@dataclass(frozen=True)
class ModelCard:
    """A released model.

    :ivar name: the name configs use (``model: NAME``).
    :ivar summary: one line for ``cellssl models list``.
    :ivar backbone: the ``backbone:`` block that builds it (architecture at the checkpoint's stored grid).
    :ivar channels: the ``channels:`` block (channel strategy) its authors embed with.
    :ivar channel_names: the channels a fixed-channel model takes, in order (vocabulary names; aliases such
        as ``nucleus`` / ``DAPI`` / ``Hoechst`` -> ``dna`` are mapped); empty for channel-adaptive models.
    :ivar normalize: the ``normalize:`` block (e.g. per-image self-normalisation).
    :ivar embed: ``embed:`` defaults: ``img_size`` (resizing) and ``features`` (n_last_blocks, avgpool).
    :ivar license: the weights' licence, as published.
    :ivar source: where the weights are published (URL or hub id) and how to get them.
    :ivar download_url: a public direct URL for ``cellssl models fetch`` (``None``: request form / manual).
    :ivar file_name: the weights file's name in the cache folder.
    :ivar sha256: the published sha256 (``None``: not published; the download records the digest it got).
    :ivar citation: the paper to cite.
    :ivar key_prefix: ``weights.key_prefix`` for the file, when the backbone is nested.
    :ivar verified: the facts checked against public sources, and which source.
    :ivar unverified: facts that could not be checked (treat as leads).
    :ivar notes: what cellssl does differently from the reference preprocessing, if anything.
    """

    name: str
    summary: str
    backbone: dict[str, Any]
    channels: dict[str, Any]
    normalize: dict[str, Any]
    embed: dict[str, Any]
    license: str
    source: str
    file_name: str
    citation: str
    channel_names: tuple[str, ...] = ()
    download_url: str | None = None
    sha256: str | None = None
    key_prefix: str | None = None
    verified: tuple[str, ...] = ()
    unverified: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"model card name {self.name!r} must be a lowercase identifier")
        for key in ("backbone", "channels"):
            if "name" not in getattr(self, key):
                raise ValueError(f"model card {self.name!r}: its {key} block needs a `name`")
        names = tuple(canonical_channel_name(n) for n in self.channel_names)
        object.__setattr__(self, "channel_names", names)
        if self.channels.get("name") == "fixed" and names and "channels" not in self.channels:
            object.__setattr__(self, "channels", {**self.channels, "channels": list(names)})
        if "/" in self.file_name or not self.file_name:
            raise ValueError(f"model card {self.name!r}: file_name must be a plain file name")

    def sections(self) -> dict[str, Any]:
        """The run-config sections the card fills: ``backbone``, ``channels``, ``normalize``, ``embed``."""
        return {"backbone": dict(self.backbone), "channels": dict(self.channels),
                "normalize": dict(self.normalize), "embed": dict(self.embed)}

    def as_dict(self) -> dict[str, Any]:
        """Every field as plain data (``cellssl models show --json``)."""
        return {**self.__dict__, "channel_names": list(self.channel_names), "verified": list(self.verified),
                "unverified": list(self.unverified), "notes": list(self.notes)}

    def how_to_get(self, path: Path) -> str:
        """One paragraph: where to download the weights, their licence, and where to put the file."""
        where = (f"run `cellssl models fetch {self.name}` (downloads {self.download_url})" if self.download_url
                 else f"get it from {self.source}")
        return (f"The weights of model '{self.name}' are not in the cache: {where}, licence: {self.license}. "
                f"Put the file at {path} (set {HOME_ENV} to use another cache folder), or set `weights:` to "
                "where the file is.")


@dataclass
class CardParams:
    """A model card takes no parameters; the registered entry's config dataclass."""


def add_card(registry: Any, card: ModelCard) -> None:
    """Register ``card`` with a ``model`` registrar (what ``cellssl_register_models`` hooks call)."""

    def factory(config: CardParams | None = None) -> ModelCard:
        return card

    factory.__name__ = f"card_{card.name}"
    registry.add(card.name, factory, CardParams, card.summary)


def get_card(name: str) -> ModelCard:
    """The registered card called ``name``.

    :raises cellssl.errors.UnknownNameError: listing the cards and the closest name.
    """
    from cellssl.plugins import get_registry

    return get_registry("model").get(name).factory(CardParams())


def cellssl_home() -> Path:
    """``$CELLSSL_HOME``, else ``$XDG_CACHE_HOME/cellssl``, else ``~/.cache/cellssl``."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "cellssl"


def weights_path(card: ModelCard) -> Path:
    """Where ``card``'s weights file lives in the cache: ``<cellssl_home()>/models/<name>/<file_name>``."""
    return cellssl_home() / "models" / card.name / card.file_name
