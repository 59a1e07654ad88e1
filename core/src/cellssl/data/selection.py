"""Channel selection for any dataset: ``use_channels: [names]`` in a ``data:`` block (:class:`ChannelSelection`).

The core wraps whatever dataset a plugin builds, so selection works for every layout a reader handles
(multi-page / OME TIFF, one file per channel, RGB, tapes): the full image is read, then the named
channels are kept in the order given. Names are matched after vocabulary canonicalisation, so ``DAPI``
selects ``dna``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cellssl.data.dataset import CellDataset
from cellssl.data.vocabulary import canonical_channel_name
from cellssl.errors import ConfigError


def resolve_channel_selection(available: Sequence[str], wanted: Sequence[str], key: str) -> list[int]:
    """Indices into ``available`` of the channels ``wanted`` names, in ``wanted``'s order.

    :param key: the config key of the list (``data.use_channels``), for messages.
    :raises ConfigError: naming ``key`` for an unknown or repeated name; the message lists the channels the
        dataset has.
    """
    available = tuple(available)
    indices: list[int] = []
    for name in wanted:
        try:
            canonical = canonical_channel_name(name)
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from None
        if canonical not in available:
            alias = f" ('{name}' means '{canonical}')" if canonical != name else ""
            raise ConfigError(key, f"names channel '{name}'{alias}, which the dataset does not have; its channels "
                                   f"are {list(available)}.")
        index = available.index(canonical)
        if index in indices:
            raise ConfigError(key, f"names channel '{canonical}' twice ({list(wanted)}).")
        indices.append(index)
    return indices


class ChannelSelection(CellDataset):
    """``base`` with only some of its channels, in a chosen order.

    Metadata, label columns and every other attribute are the base dataset's (attribute access is
    delegated), so plugins' extra methods (``files``, ``labels``, ``skipped``) keep working.

    :param base: the dataset to select from.
    :param names: channel names or aliases, in the order wanted.
    :param key: the config key of the selection, for messages.
    :raises ConfigError: see :func:`resolve_channel_selection`.
    """

    def __init__(self, base: CellDataset, names: Sequence[str], key: str = "data.use_channels") -> None:
        self.base = base
        self.indices = resolve_channel_selection(base.channel_names, names, key)
        self.channel_names = tuple(base.channel_names[i] for i in self.indices)
        self.label_columns = tuple(getattr(base, "label_columns", ()))

    @property
    def metadata(self) -> Any:  # type: ignore[override]
        return self.base.metadata

    def load_image(self, index: int) -> Any:
        image = self.base.load_image(index)
        return image[self.indices]

    def __getattr__(self, name: str) -> Any:
        if name == "base":  # not set yet (unpickling): avoid recursion
            raise AttributeError(name)
        return getattr(self.base, name)

    def describe(self) -> str:
        return f"{self.base.describe()}; using channels {list(self.channel_names)}"
