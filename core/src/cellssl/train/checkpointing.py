"""Training checkpoints: atomic writes, ``torch.load(weights_only=True)`` reads, RNG capture and restore.

A checkpoint (``run_dir/checkpoints/last.pt``, every ``checkpoint_every_steps`` steps; ``final.pt`` at the
end of a run) is a dict of tensors and plain Python values only::

    {"format": "cellssl-train-checkpoint", "version": 1,
     "step": int, "epoch": int, "batch_in_epoch": int,        # data position: the next batch to train on
     "objective": state dict (student, teacher, centring buffers),
     "optimizer": AdamW state dict, "schedules": ScheduleSet state, "monitor": collapse-monitor state,
     "plan": BatchPlan parameters (the sampler is a pure function of seed and epoch),
     "rng": {"python": [...], "numpy": {...}, "torch": ByteTensor, "cuda": [ByteTensor, ...]},
     "train": the train section (for reference)}

Writing goes to a temporary file in the same folder which then replaces the target, so a crash never
leaves a partial checkpoint; the previous one survives until the new one is complete. The temporary file
of a write killed mid-way is removed when the run starts again (:func:`remove_stale_temp_checkpoints`).
An empty or damaged ``last.pt`` (copied in by hand, a full disk) is a :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cellssl.atomic import atomic_open, remove_stale_temp_files
from cellssl.errors import CheckpointError
from cellssl.models.checkpoint import read_checkpoint_file

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
FINAL_CHECKPOINT = "final.pt"
FORMAT = "cellssl-train-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("step", "epoch", "batch_in_epoch", "objective", "optimizer", "schedules", "rng")
DAMAGED_REMEDY = "Delete it to restart training from step 0, or restore it from a copy."


def checkpoint_dir(run_dir: str | os.PathLike[str]) -> Path:
    """``run_dir/checkpoints``."""
    return Path(run_dir) / CHECKPOINT_DIR


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint a run resumes from (``checkpoints/last.pt``), or None."""
    path = checkpoint_dir(run_dir) / LAST_CHECKPOINT
    return path if path.is_file() else None


def remove_stale_temp_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files of checkpoint writes that a killed process left in ``run_dir/checkpoints``.

    Only the atomic writer's temporaries (``.last.pt.<random>.tmp``) older than this process are removed
    (see :func:`cellssl.atomic.remove_stale_temp_files`); call it from the process that owns the run (rank 0).

    :return: the removed files.
    """
    return remove_stale_temp_files(checkpoint_dir(run_dir))


def capture_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA when ``device`` is CUDA) RNG states as tensors and plain values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [int(version), [int(v) for v in internal], gauss],
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Inverse of :func:`capture_rng_state`.

    :raises CheckpointError: if the state is malformed.
    """
    try:
        version, internal, gauss = state["python"]
        random.setstate((int(version), tuple(int(v) for v in internal), gauss))
        np_state = state["numpy"]
        np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), int(np_state["pos"]),
                             int(np_state["has_gauss"]), float(np_state["cached_gaussian"])))
        torch.set_rng_state(state["torch"])
        if device is not None and device.type == "cuda" and state.get("cuda"):
            torch.cuda.set_rng_state_all(state["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"the checkpoint's RNG state is malformed ({exc}); it cannot be resumed exactly") from exc


# ----------------------------------------------------------------------------- files


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format tag) atomically with :func:`torch.save`; returns the path."""
    path = Path(path)
    data = {"format": FORMAT, "version": VERSION, **payload}
    with atomic_open(path, "wb") as handle:
        torch.save(data, handle)
    logger.debug("wrote checkpoint %s (step %s)", path, payload.get("step"))
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training checkpoint with ``torch.load(weights_only=True)`` onto the CPU.

    :raises CheckpointError: if the file is missing, empty, truncated or otherwise unreadable (see
        :func:`cellssl.models.checkpoint.read_checkpoint_file`), or not a complete cellssl training
        checkpoint; the message names the file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training checkpoint {path} does not exist")
    data = read_checkpoint_file(path, what="training checkpoint", remedy=DAMAGED_REMEDY)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cellssl training checkpoint (no format tag {FORMAT!r}). To embed "
                              "with backbone weights use `weights:`; to train, move the file out of checkpoints/.")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {data.get('version')} is not supported "
                              f"(this cellssl writes version {VERSION})")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"{path}: incomplete training checkpoint, missing {missing}")
    return data


def load_objective_state(objective: nn.Module, state: dict[str, Any], source: str | os.PathLike[str]) -> None:
    """Load the objective's state dict (strict), with an error that names the differing keys.

    :raises CheckpointError: if keys or shapes differ (the config changed since the checkpoint).
    """
    expected = objective.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        details = "; ".join(part for part in (
            f"missing {missing[:4]}" if missing else "",
            f"unexpected {unexpected[:4]}" if unexpected else "",
            f"shape (checkpoint vs model) {mismatched[:4]}" if mismatched else "",
        ) if part)
        raise CheckpointError(
            f"{source}: the checkpoint does not match the configured model ({details}). The backbone, objective or "
            "channel config changed since it was written: restore that config, or use another run.output_dir "
            "(or delete the checkpoints folder) to start a new run."
        )
    objective.load_state_dict(state, strict=True)
