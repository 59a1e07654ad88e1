"""Run-wide data policy that every dataset built by the core sees, whichever plugin provides it.

Some settings belong to any ``data:`` block, not to one dataset's parameters (``allow_outside_root``).
The core removes them from the block, then builds the dataset inside :func:`dataset_policy`; datasets
built on :class:`~cellssl.data.table.TableDataset` read :func:`current_policy` while they resolve paths.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetPolicy:
    """What the core asks of every dataset it builds.

    :ivar allow_outside_root: accept image paths that resolve (through ``..`` or a symlink) outside the
        dataset's ``root``; by default such a path is an error naming the row.
    """

    allow_outside_root: bool = False


_DEFAULT = DatasetPolicy()
_POLICY: contextvars.ContextVar[DatasetPolicy | None] = contextvars.ContextVar("cellssl_dataset_policy", default=None)


def current_policy() -> DatasetPolicy:
    """The policy of the dataset being built (the default policy outside :func:`dataset_policy`)."""
    return _POLICY.get() or _DEFAULT


@contextlib.contextmanager
def dataset_policy(policy: DatasetPolicy) -> Iterator[DatasetPolicy]:
    """Build datasets under ``policy`` inside the ``with`` block."""
    token = _POLICY.set(policy)
    try:
        yield policy
    finally:
        _POLICY.reset(token)
