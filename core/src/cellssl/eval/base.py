"""The evaluator contract (:class:`Evaluator`, :class:`EvalContext`) and helpers every evaluator shares.

An evaluator scores an :class:`~cellssl.embed.store.EmbeddingTable` (embeddings + metadata) and
returns a JSON-serialisable dict; the runner writes it to ``<run_dir>/eval/<name>.json`` with
:func:`write_result_json`. Labels come from metadata columns, read by :func:`cellssl.data.labels.labels_from_metadata`
(re-exported here):

- one column, single-label (multi-class);
- one column holding several labels joined by a separator (``"Nucleoplasm|Cytosol"``), multi-label;
- several boolean columns, one per label (``True``/``False``, ``1``/``0``, ``"yes"``/``"no"``), multi-label.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellssl.atomic import atomic_write_json
from cellssl.data.labels import EvalLabels, labels_from_metadata

if TYPE_CHECKING:

    from cellssl.embed.store import EmbeddingTable



__all__ = ["EvalContext", "EvalLabels", "Evaluator", "labels_from_metadata", "to_jsonable", "write_result_json"]

@dataclass
class EvalContext:
    """What an evaluator needs besides the embedding table.

    :ivar run_dir: the run directory (results go to ``run_dir / "eval"``).
    :ivar label_columns: the dataset's label columns (fallback when the evaluator's config names none).
    :ivar label_separator: separator of a multi-label column (``None``: single-label).
    :ivar identity: dataset / model identity (names, checkpoint, channels), copied into results.
    :ivar load_model: for evaluators that need the model (attention maps, drop-one-channel): returns
        ``(channel strategy, backbone)``, the backbone with the run's weights, in eval mode, on ``device``.
        ``None`` when the run has no model (e.g. evaluating an embedding table alone).
    :ivar load_dataset: for evaluators that need the images: returns ``(dataset, preprocess)`` where
        ``preprocess(image, channel_names)`` is the embedding preprocessing (resize + normalise).
    :ivar embedder: for evaluators that need fresh embeddings (other rows, channels dropped): returns the run's
        :class:`~cellssl.embed.embedder.Embedder` — the embed stage's preprocessing, weights and feature recipe,
        so its embeddings of a row equal the table's. For another dataset (other channels, e.g. the CHAMMI
        subsets) ``embedder().for_dataset(dataset, stats_dir)`` keeps the model and rebuilds the run's
        preprocessing for it, and ``cached_export`` keeps its embeddings on disk under their fingerprint.
        ``None`` when the run has no model (a table evaluated alone): an evaluator that needs one raises
        ``ConfigError`` naming ``backbone``.
    :ivar device: torch device name the model runs on (``"cpu"``, ``"cuda"``, ...).
    """

    run_dir: Path
    label_columns: list[str] = field(default_factory=list)
    label_separator: str | None = None
    identity: dict[str, Any] = field(default_factory=dict)
    load_model: Callable[[], tuple[Any, Any]] | None = None
    load_dataset: Callable[[], tuple[Any, Any]] | None = None
    embedder: Callable[[], Any] | None = None
    device: str = "cpu"


class Evaluator(ABC):
    """Scores an embedding table. Subclasses set :attr:`name` and implement :meth:`evaluate`."""

    name: str = ""

    @abstractmethod
    def evaluate(self, table: EmbeddingTable, context: EvalContext) -> dict[str, Any]:
        """Score ``table``.

        :return: a JSON-serialisable dict with at least ``evaluator`` (the name), ``metrics`` (flat
            metric name -> number), the split sizes and the ``config`` used.
        :raises cellssl.errors.CellsslError: for labels, columns or settings that do not fit the table.
        """


def to_jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, paths, tuples and dataclasses made plain JSON types.

    Non-finite floats become ``None`` so the output is strict JSON.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_result_json(result: dict[str, Any], run_dir: str | Path, name: str) -> Path:
    """Write ``result`` to ``<run_dir>/eval/<name>.json`` atomically.

    :raises ValueError: if ``name`` is not a plain file stem (letters, digits, ``-``, ``_``, ``.``).
    :raises TypeError: if ``result`` holds a value JSON cannot represent.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise ValueError(f"result name {name!r} must be a file stem of letters, digits, '-', '_', '.'")
    folder = Path(run_dir) / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    payload = to_jsonable(result)
    json.dumps(payload, allow_nan=False)  # fail before touching the disk
    atomic_write_json(path, payload)
    return path


