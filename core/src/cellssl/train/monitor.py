"""Training metrics: the collapse monitor, ``metrics.jsonl`` and optional TensorBoard.

Self-distillation fails in two ways (Caron et al. 2021, section 5.3): the teacher output becomes
uniform (every image gets the same flat distribution: the loss sits at ``log K``), or it is dominated by
one prototype (every image gets the same one-hot output). :func:`collapse_stats` measures both on the
teacher targets of each step:

- ``teacher_entropy``: mean over images of the entropy of the teacher distribution (uniform: ``log K``);
- ``teacher_mean_entropy``: entropy of the batch-mean teacher distribution (one prototype for all: 0);
- ``embed_std``: mean over dimensions of the std over the batch of the L2-normalised teacher embeddings
  (about ``1 / sqrt(D)`` for well-spread embeddings, 0 when all images map to one point).

:class:`CollapseMonitor` warns (``logging`` and a :class:`CollapseWarning`) when the output has been
uniform or one-hot for ``patience`` consecutive steps.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import IO, Any

import torch
import torch.nn.functional as F

from cellssl.atomic import atomic_write_text
from cellssl.errors import ConfigError
from cellssl.train.config import CollapseConfig

logger = logging.getLogger(__name__)


class CollapseWarning(UserWarning):
    """The teacher's output has collapsed (uniform, or the same prototype for every image)."""


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * torch.log(probs.clamp_min(1e-30))).sum(dim=-1)


@torch.no_grad()
def collapse_stats(probs: torch.Tensor, embeddings: torch.Tensor | None = None) -> dict[str, float]:
    """Collapse statistics of one step (see the module docstring).

    :param probs: ``(N, K)`` teacher distributions (rows sum to 1).
    :param embeddings: ``(N, D)`` teacher embeddings, optional.
    :return: ``teacher_entropy``, ``teacher_entropy_max`` (``log K``), ``teacher_mean_entropy`` and, with
        embeddings of at least 2 rows, ``embed_std``; plain floats.
    """
    p = probs.detach().float()
    stats = {
        "teacher_entropy": float(_entropy(p).mean()),
        "teacher_entropy_max": math.log(p.shape[-1]),
        "teacher_mean_entropy": float(_entropy(p.mean(dim=0))),
    }
    if embeddings is not None and embeddings.shape[0] >= 2:
        normed = F.normalize(embeddings.detach().float(), dim=-1)
        stats["embed_std"] = float(normed.std(dim=0).mean())
    return stats


class CollapseMonitor:
    """Tracks :func:`collapse_stats` and warns after ``patience`` consecutive collapsed steps.

    The warning fires once per collapse episode (again only after the output has recovered).
    """

    def __init__(self, config: CollapseConfig | None = None) -> None:
        self.config = config or CollapseConfig()
        self.state: str | None = None
        self.count = 0
        self.warned = False

    def classify(self, stats: dict[str, float]) -> str | None:
        """``"uniform"``, ``"one_hot"`` or None for a healthy output (K = 1 is never classified)."""
        log_k = stats["teacher_entropy_max"]
        if log_k <= 0:
            return None
        if stats["teacher_entropy"] / log_k > self.config.uniform_threshold:
            return "uniform"
        if stats["teacher_mean_entropy"] / log_k < self.config.onehot_threshold:
            return "one_hot"
        return None

    def update(self, step: int, probs: torch.Tensor, embeddings: torch.Tensor | None = None) -> dict[str, float]:
        """Statistics of step ``step`` plus ``collapse`` (0 healthy, 1 uniform, 2 one-hot); may warn."""
        stats = collapse_stats(probs, embeddings)
        state = self.classify(stats)
        if state != self.state:
            self.state, self.count, self.warned = state, 0, False
        if state is not None:
            self.count += 1
            if self.count >= self.config.patience and not self.warned:
                self.warned = True
                self._warn(step, state, stats)
        stats["collapse"] = {None: 0.0, "uniform": 1.0, "one_hot": 2.0}[state]
        return stats

    def _warn(self, step: int, state: str, stats: dict[str, float]) -> None:
        log_k = stats["teacher_entropy_max"]
        if state == "uniform":
            what = (f"the teacher output has been nearly uniform for {self.count} steps (mean entropy "
                    f"{stats['teacher_entropy']:.3f} of its maximum log K = {log_k:.3f})")
        else:
            what = (f"the teacher has sent every image to the same prototype for {self.count} steps (entropy of "
                    f"the mean output {stats['teacher_mean_entropy']:.3f}, maximum log K = {log_k:.3f})")
        message = (f"collapse at step {step}: {what}; the student learns nothing. Try objective.centering: "
                   "sinkhorn_knopp, objective.head.use_bn: true, fewer prototypes (objective.head.out_dim), a "
                   "lower train.teacher_temp, or a lower train.lr.")
        logger.warning(message)
        warnings.warn(message, CollapseWarning, stacklevel=3)

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.state, "count": self.count, "warned": self.warned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state, self.count, self.warned = state.get("state"), int(state.get("count", 0)), bool(state.get("warned"))


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (and scalars to TensorBoard when asked).

    :param path: the ``metrics.jsonl`` file.
    :param tensorboard_dir: TensorBoard log folder, or None.
    :raises ConfigError: if TensorBoard is requested but the ``tensorboard`` package is not installed.
    """

    def __init__(self, path: Path, tensorboard_dir: Path | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[str] | None = None
        self._tb: Any = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("train.tensorboard", "is true but the `tensorboard` package is not installed: "
                                                       "pip install tensorboard (or set train.tensorboard: false)."
                                  ) from None
            self._tb = SummaryWriter(log_dir=str(tensorboard_dir))

    def truncate_after(self, step: int) -> None:
        """Drop lines whose ``step`` is above ``step`` (written after the checkpoint a run resumes from)."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
        atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (numbers, strings) as one line and flush."""
        if self._handle is None:
            self._handle = self.path.open("a", encoding="utf-8")
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        if self._tb is not None:
            step = int(record.get("step", 0))
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
