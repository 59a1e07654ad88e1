"""The fine-tuning loop: epochs over the fit rows, validation after each, early stopping, checkpoints, resume.

Determinism: epoch ``e`` draws its batch order (and balanced-sampling draws) from
``numpy.random.default_rng([seed, e])`` and seeds torch with ``seed * 100003 + e`` before its first step
(flips, dropout). An epoch therefore depends only on the weights it starts from, and a run resumed from
the checkpoint written after epoch ``e`` continues exactly as the uninterrupted run.

Checkpoint (``<dir>/last.pt``, written atomically after every epoch, read with ``weights_only=True``)::

    {"format": "cellssl-finetune-checkpoint", "version": 1, "epoch": epochs done,
     "model": state dict, "optimizer": AdamW state, "best": {"epoch", "score", "state"},
     "bad_epochs": epochs since the best, "history": [per-epoch records], "signature": what must match}

Several processes (torchrun): every rank holds the same inputs and draws the same batch order; rank ``r``
trains on its contiguous share of each batch (:func:`~cellssl.train.distributed.rank_range`), flips are drawn
for the whole batch before it is shared, and each share's loss is scaled by ``share / batch * world`` so that
the all-reduced (averaged) gradient is the gradient of the whole batch's mean loss, as in one process (exact
for an unweighted loss and a model without batch statistics, up to summation order). Validation and
prediction run on every rank over all rows (no collective); only rank 0 writes the checkpoint, and every
rank waits for it before the next epoch.

Model selection: the epoch with the highest validation score (``select_metric``) wins, ties to the earlier
epoch; training stops after ``patience`` epochs without improvement. Multi-label heads get per-class
thresholds chosen on the validation rows (:func:`choose_thresholds`) for the selected epoch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cellssl.atomic import atomic_open
from cellssl.errors import CheckpointError
from cellssl.eval.engines.metrics import multiclass_metrics, multilabel_metrics
from cellssl.finetune.config import FinetuneSection

logger = logging.getLogger(__name__)

FORMAT = "cellssl-finetune-checkpoint"
VERSION = 1
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


def choose_thresholds(y: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Per label, the threshold of :data:`THRESHOLD_GRID` with the highest F1 on ``(y, probabilities)``;
    ties go to the threshold closest to 0.5. A label without positives keeps 0.5."""
    thresholds = np.full(y.shape[1], 0.5)
    order = np.argsort(np.abs(THRESHOLD_GRID - 0.5), kind="stable")
    for label in range(y.shape[1]):
        truth = y[:, label] == 1
        if not truth.any():
            continue
        best, best_f1 = 0.5, -1.0
        for t in THRESHOLD_GRID[order]:
            predicted = probabilities[:, label] >= t
            tp = float((predicted & truth).sum())
            f1 = 2 * tp / (predicted.sum() + truth.sum())
            if f1 > best_f1 + 1e-12:
                best, best_f1 = float(t), f1
        thresholds[label] = best
    return thresholds


def score(y: np.ndarray, logits: np.ndarray, multilabel: bool, names: list[str], metric: str,
          thresholds: np.ndarray | None = None, per_class: bool = False) -> tuple[float, dict[str, Any]]:
    """``(score of metric, full report)`` of ``logits`` against ``y`` (multi-label: sigmoid >= thresholds)."""
    if multilabel:
        probabilities = 1.0 / (1.0 + np.exp(-logits))
        cut = 0.5 if thresholds is None else thresholds[None, :]
        report = multilabel_metrics(y, (probabilities >= cut).astype(np.int8), names, per_label=per_class)
    else:
        report = multiclass_metrics(y, logits.argmax(axis=1), names, per_class=per_class)
    return float(report[metric]), report


@dataclass
class LoopState:
    """What a checkpoint holds besides the weights."""

    epoch: int = 0
    best_epoch: int = -1
    best_score: float = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


class FinetuneLoop:
    """Trains ``model`` (a module mapping inputs to logits) on ``fit`` inputs, validating on ``val`` inputs.

    :param forward: ``forward(inputs, train)`` -> logits; ``inputs`` are images (end-to-end) or cached
        features (head only).
    :param augment: applied to a training batch (flips), or ``None``.
    :param checkpoint_dir: where ``last.pt`` goes; ``None``: no checkpoints.
    :param signature: plain values a resumed checkpoint must match (config, rows, classes).
    """

    def __init__(self, model: torch.nn.Module, groups: list[dict[str, Any]], forward: Callable[..., torch.Tensor],
                 section: FinetuneSection, fit: tuple[torch.Tensor, np.ndarray], val: tuple[torch.Tensor, np.ndarray],
                 *, multilabel: bool, names: list[str], metric: str, checkpoint_dir: Path | None,
                 signature: dict[str, Any], augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 loss_weight: torch.Tensor | None = None, device: torch.device | str = "cpu") -> None:
        self.model, self.forward, self.section = model, forward, section
        self.fit_x, self.fit_y = fit
        self.val_x, self.val_y = val
        self.multilabel, self.names, self.metric = multilabel, names, metric
        self.checkpoint_dir, self.signature, self.augment = checkpoint_dir, signature, augment
        self.loss_weight, self.device = loss_weight, torch.device(device)
        self.optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "name"} for g in groups],
                                           lr=section.lr)
        self.steps_per_epoch = max(1, math.ceil(len(self.fit_y) / section.batch_size))
        self.total_steps = self.steps_per_epoch * section.epochs
        self.state = LoopState()
        from cellssl.train.distributed import get_rank, get_world_size

        self.rank, self.world = get_rank(), get_world_size()

    # ------------------------------------------------------------------ batches and steps
    def _order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.section.seed, epoch])
        n = len(self.fit_y)
        if self.section.class_balance == "sampler" and not self.multilabel:
            counts = np.bincount(self.fit_y)
            p = 1.0 / counts[self.fit_y]
            return rng.choice(n, size=n, replace=True, p=p / p.sum())
        return rng.permutation(n)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weight = None if self.loss_weight is None else self.loss_weight.to(logits.device)
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, y.float(), pos_weight=weight)
        return F.cross_entropy(logits, y, weight=weight)

    def _set_lr(self, step: int) -> None:
        factor = 0.5 * (1.0 + math.cos(math.pi * step / self.total_steps))
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def predict(self, inputs: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """Logits of ``inputs`` in eval mode, as float64 numpy."""
        self.model.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(inputs), batch_size):
                batch = inputs[start : start + batch_size].to(self.device)
                with _autocast(self.device, self.section.precision):
                    out.append(self.forward(batch, False).float().cpu())
        return torch.cat(out).numpy().astype(np.float64)

    def _epoch(self, epoch: int) -> float:
        torch.manual_seed(self.section.seed * 100003 + epoch)
        self.model.train()
        order, losses = self._order(epoch), []
        y_all = torch.as_tensor(self.fit_y)
        for i in range(self.steps_per_epoch):
            picked = order[i * self.section.batch_size : (i + 1) * self.section.batch_size]
            index = torch.as_tensor(picked)
            x, y = self.fit_x[index].to(self.device), y_all[index].to(self.device)
            if self.augment is not None:
                x = self.augment(x)
            share = 1.0
            if self.world > 1:
                x, y, share = self._share(x, y)
            self._set_lr(epoch * self.steps_per_epoch + i)
            with _autocast(self.device, self.section.precision):
                logits = self.forward(x, True)
            loss = self._loss(logits.float(), y) * share
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(self._batch_loss(loss.detach()))
        return float(np.mean(losses))

    def _share(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """This rank's contiguous share of a batch and its loss scale ``len(share) / len(batch) * world``; an
        empty share keeps the batch's first row with scale 0 (every rank must run a backward pass)."""
        from cellssl.train.distributed import rank_range

        part = rank_range(len(x), self.rank, self.world)
        if len(part) == 0:
            return x[:1], y[:1], 0.0
        return x[part.start : part.stop], y[part.start : part.stop], len(part) / len(x) * self.world

    def _batch_loss(self, loss: torch.Tensor) -> float:
        """The whole batch's mean loss: the mean over ranks of the scaled share losses (one process: ``loss``)."""
        if self.world == 1:
            return float(loss)
        import torch.distributed as dist

        total = loss.float().reshape(1).clone()
        total = total.cpu() if dist.get_backend() == "gloo" else total
        dist.all_reduce(total)
        return float(total) / self.world

    # ------------------------------------------------------------------ checkpoints
    def _save(self) -> None:
        from cellssl.train.distributed import barrier

        if self.checkpoint_dir is None:
            return
        if self.rank != 0:
            barrier()
            return
        s = self.state
        payload = {"format": FORMAT, "version": VERSION, "epoch": s.epoch, "model": self.model.state_dict(),
                   "optimizer": self.optimizer.state_dict(), "bad_epochs": s.bad_epochs, "history": s.history,
                   "best": {"epoch": s.best_epoch, "score": s.best_score, "state": s.best_state},
                   "signature": self.signature}
        with atomic_open(self.checkpoint_dir / "last.pt", "wb") as handle:
            torch.save(payload, handle)
        barrier()

    def resume(self) -> bool:
        """Load ``last.pt`` when there is one; returns whether it did.

        :raises CheckpointError: for a damaged file, another format, or a checkpoint of another config or
            other rows (the message says to delete the folder or restore the config).
        """
        from cellssl.atomic import remove_stale_temp_files
        from cellssl.models.checkpoint import read_checkpoint_file

        if self.checkpoint_dir is None:
            return False
        if self.rank == 0:
            remove_stale_temp_files(self.checkpoint_dir)
        from cellssl.train.distributed import barrier

        barrier()
        path = self.checkpoint_dir / "last.pt"
        if not path.is_file():
            return False
        data = read_checkpoint_file(path, what="fine-tuning checkpoint",
                                    remedy=f"Delete {self.checkpoint_dir} to fine-tune from the start.")
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise CheckpointError(f"{path} is not a cellssl fine-tuning checkpoint (version {VERSION}); delete it "
                                  "to fine-tune from the start")
        if data.get("signature") != self.signature:
            raise CheckpointError(f"{path} was written for another finetune config, dataset rows or classes; delete "
                                  f"{self.checkpoint_dir} to fine-tune from the start, or restore that config")
        self.model.load_state_dict(data["model"])
        self.optimizer.load_state_dict(data["optimizer"])
        best = data["best"]
        self.state = LoopState(int(data["epoch"]), int(best["epoch"]), float(best["score"]), best["state"],
                               int(data["bad_epochs"]), list(data["history"]))
        logger.info("finetune: resumed from %s after epoch %d", path, self.state.epoch)
        return True

    # ------------------------------------------------------------------ the loop
    def run(self, stop_after: int | None = None) -> LoopState:
        """Train until ``epochs``, early stopping, or ``stop_after`` epochs done in total (a planned interruption,
        as a kill after that epoch's checkpoint would leave it). Resumes from ``last.pt`` first.

        :return: the state; ``best_state`` holds the selected weights (``model`` keeps the last epoch's).
        """
        from tqdm import tqdm

        self.resume()
        s, cfg = self.state, self.section
        with tqdm(total=cfg.epochs, initial=s.epoch, desc="finetune", unit="epoch") as bar:
            while s.epoch < cfg.epochs and not (cfg.patience and s.bad_epochs >= cfg.patience):
                if stop_after is not None and s.epoch >= stop_after:
                    return s
                train_loss = self._epoch(s.epoch)
                val_logits = self.predict(self.val_x)
                val_score, _ = score(self.val_y, val_logits, self.multilabel, self.names, self.metric)
                val_loss = float(self._loss(torch.as_tensor(val_logits, dtype=torch.float32),
                                            torch.as_tensor(self.val_y)))
                s.history.append({"epoch": s.epoch, "train_loss": train_loss, "val_loss": val_loss,
                                  "val_score": val_score})
                if val_score > s.best_score:
                    s.best_epoch, s.best_score, s.bad_epochs = s.epoch, val_score, 0
                    s.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                else:
                    s.bad_epochs += 1
                s.epoch += 1
                self._save()
                bar.update(1)
                bar.set_postfix(loss=f"{train_loss:.4f}", val=f"{val_score:.4f}")
                logger.info("finetune epoch %d: train loss %.4f, val loss %.4f, val %s %.4f", s.epoch, train_loss,
                            val_loss, self.metric, val_score)
        return s


def _autocast(device: torch.device, precision: str) -> Any:
    from cellssl.embed.export import autocast_context

    return autocast_context(device, precision)
