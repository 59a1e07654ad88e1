"""The dataset contract every dataset plugin implements: :class:`CellDataset`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import pandas as pd
from torch.utils.data import Dataset

from cellssl.data.sample import CellSample


class CellDataset(Dataset[CellSample], ABC):
    """A map-style dataset of :class:`CellSample`.

    Subclasses set :attr:`metadata` (one row per sample, in sample order, index ``0..N-1``) and
    :attr:`channel_names`, and implement :meth:`load_image`.

    :ivar metadata: the validated metadata table; row ``i`` describes sample ``i``.
    :ivar channel_names: names of the image channels (shared vocabulary, see
        :mod:`cellssl.data.vocabulary`). Every sample of a dataset has the same channels.
    :ivar label_columns: metadata columns holding labels (one column for multi-class; several boolean
        columns, or one ``|``-separated column, for multi-label).
    """

    metadata: pd.DataFrame
    channel_names: tuple[str, ...]
    label_columns: tuple[str, ...] = ()

    @abstractmethod
    def load_image(self, index: int) -> "torch.Tensor":  # noqa: F821, UP037
        """Read sample ``index``'s image as float32 ``(C, H, W)``, scaled by the declared bit depth.

        :raises cellssl.errors.DataError: naming the file and row if the image is missing or unreadable.
        """

    def __len__(self) -> int:
        return len(self.metadata)

    def __getitem__(self, index: int) -> CellSample:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for a dataset of {len(self)} samples")
        image = self.load_image(index)
        return CellSample(image, tuple(self.channel_names), index, self.metadata.iloc[index].to_dict())

    @property
    def num_channels(self) -> int:
        """Number of channels ``C`` of every sample."""
        return len(self.channel_names)

    def describe(self) -> str:
        """One line: size, channels and label columns (for logs)."""
        labels = f", labels {list(self.label_columns)}" if self.label_columns else ""
        return f"{type(self).__name__}: {len(self)} samples, channels {list(self.channel_names)}{labels}"


def subset_metadata(metadata: pd.DataFrame, indices: Sequence[int]) -> pd.DataFrame:
    """Rows ``indices`` of ``metadata`` with a fresh ``0..n-1`` index."""
    return metadata.iloc[list(indices)].reset_index(drop=True)
