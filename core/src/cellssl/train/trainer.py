"""The SSL training loop: :class:`Trainer`.

One step: schedules -> (bf16 autocast) objective forward -> finite-loss check -> backward -> gradient
clipping -> AdamW step -> teacher EMA -> collapse monitor -> ``metrics.jsonl``. Checkpoints go to
``run_dir/checkpoints/last.pt`` every ``checkpoint_every_steps`` steps and at the end (``final.pt`` too);
a run directory that holds ``last.pt`` is resumed from it (model, teacher, optimiser, schedules, RNG
states, data position), so an interrupted run ends with the same weights as an uninterrupted one on CPU.

A loss or gradient norm that is NaN/inf stops the run with :class:`~cellssl.errors.TrainingDivergedError`
before anything is written, so the last good checkpoint stays in place.

The device is the one passed in (no ``.cuda()``). Under torch.distributed (``torchrun``, the slurm
launcher) :class:`~cellssl.train.parallel.ParallelTraining` wraps the student (DDP or FSDP,
``train.distributed``), each rank trains on its slice of every global batch
(:class:`~cellssl.train.distributed.ShardedBatchPlan`), logged losses are averaged over ranks, and only
rank 0 writes checkpoints (full, world-size-independent state), ``metrics.jsonl`` and the teacher.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from cellssl.data.normalize import Normalizer
from cellssl.errors import CheckpointError, TrainingDivergedError
from cellssl.models.bf16 import bf16_autocast
from cellssl.models.checkpoint import save_state_dict_atomic
from cellssl.objectives.base import Objective
from cellssl.train.checkpointing import (
    FINAL_CHECKPOINT,
    LAST_CHECKPOINT,
    capture_rng_state,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    remove_stale_temp_checkpoints,
    save_checkpoint,
)
from cellssl.train.config import TrainSection
from cellssl.train.data import BatchPlan, ViewDataset, make_loader
from cellssl.train.distributed import current_env, shard_plan
from cellssl.train.monitor import CollapseMonitor, MetricsLog
from cellssl.train.parallel import ParallelTraining
from cellssl.train.param_groups import param_groups
from cellssl.train.schedules import ScheduleSet

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
Callback = Callable[["Trainer", dict[str, Any]], None]


@dataclass
class TrainResult:
    """Outcome of :meth:`Trainer.fit`.

    :ivar step: optimisation steps done in total (across resumes). :ivar total_steps: planned steps.
    :ivar completed: ``step == total_steps``. :ivar stopped_by_time: ``max_minutes`` (or a callback's stop
        request) ended the run early.
    :ivar checkpoint: the last checkpoint written. :ivar last_record: the last metrics record (or empty).
    """

    step: int
    total_steps: int
    completed: bool
    stopped_by_time: bool
    checkpoint: Path | None
    last_record: dict[str, Any]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CPU and CUDA for ``precision="bf16"`` (its matmuls on fp32 units on a CPU without native
    bf16: :func:`~cellssl.models.bf16.bf16_autocast`); nothing for ``"fp32"``."""
    if precision == "bf16":
        return bf16_autocast(device)
    return contextlib.nullcontext()


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def build_optimizer(model: torch.nn.Module, section: TrainSection) -> torch.optim.AdamW:
    """AdamW over :func:`~cellssl.train.param_groups.param_groups` of ``model`` (lr and wd set per step)."""
    groups = param_groups(model, weight_decay=section.weight_decay, layerwise_decay=section.layerwise_decay,
                          patch_embed_lr_mult=section.patch_embed_lr_mult)
    beta1, beta2 = section.adamw_betas
    return torch.optim.AdamW(groups, lr=0.0, betas=(beta1, beta2))


class Trainer:
    """Trains ``objective`` on ``datasets`` (see the module docstring).

    :param objective: the SSL objective (student, teacher, loss, views).
    :param datasets: the channel strategy's training datasets (one per data source).
    :param normalizer: applied to every view (the run's ``normalize:`` section).
    :param section: the validated ``train:`` section.
    :param run_dir: the run directory (``checkpoints/``, ``metrics.jsonl``, ``teacher_backbone.pt``).
    :param device: where the model runs.
    :param seed: the run seed (data order, augmentations, masks).
    :param weights: sampling weight per dataset (None: proportional to size).
    :param callbacks: called as ``callback(trainer, record)`` after every step (and its checkpoint); the time
        they take does not count towards ``max_minutes``; one can end the run early (checkpointed, like a
        time limit) with ``trainer.stop_requested = True``.
    :param teacher_file: file name of the exported teacher backbone inside ``run_dir``.
    """

    def __init__(
        self,
        objective: Objective,
        datasets: Sequence[Dataset],
        normalizer: Normalizer,
        section: TrainSection,
        run_dir: str | os.PathLike[str],
        device: torch.device,
        seed: int,
        *,
        weights: Sequence[float] | None = None,
        callbacks: Sequence[Callback] = (),
        teacher_file: str = "teacher_backbone.pt",
    ) -> None:
        self.objective = objective.to(device)
        self.parallel = ParallelTraining(section.distributed, current_env(device), seed)
        self.parallel.prepare(self.objective, device)  # before the optimizer: FSDP replaces the parameters
        self.section = section
        self.run_dir = Path(run_dir)
        self.device = device
        self.seed = seed
        self.callbacks = list(callbacks)
        self.teacher_file = teacher_file
        self.views = ViewDataset(datasets, objective.make_views(normalizer))
        self.collate = objective.make_collate()
        self.plan = shard_plan(BatchPlan(self.views.sizes, section.batch_size, seed, weights, section.epoch_length),
                               self.parallel.env)
        self.steps_per_epoch = self.plan.steps_per_epoch
        self.total_steps = section.max_steps or section.epochs * self.steps_per_epoch
        self.schedules = self._build_schedules()
        self.optimizer = build_optimizer(objective.student, section)
        self.parameters = [p for p in objective.student.parameters() if p.requires_grad]
        self.monitor = CollapseMonitor(section.collapse)
        self.step = 0
        self.checkpoint_path: Path | None = None
        self.stop_requested = False
        self._last_tick = time.perf_counter()

    def _build_schedules(self) -> ScheduleSet:
        s, total = self.section, self.total_steps

        def steps(epochs: float) -> int:
            return min(total, round(epochs * self.steps_per_epoch))

        return ScheduleSet(
            total, lr=s.peak_lr(), min_lr=s.min_lr, warmup_steps=steps(s.warmup_epochs),
            start_warmup_lr=s.start_warmup_lr, weight_decay=s.weight_decay, weight_decay_end=s.weight_decay_end,
            teacher_momentum=s.teacher_momentum, teacher_momentum_end=s.teacher_momentum_end,
            teacher_temp=s.teacher_temp, warmup_teacher_temp=s.warmup_teacher_temp,
            teacher_temp_warmup_steps=steps(s.teacher_temp_warmup_epochs),
            freeze_last_layer_steps=steps(s.freeze_last_layer_epochs),
        )

    # ------------------------------------------------------------------ checkpoints

    def save(self, name: str = LAST_CHECKPOINT) -> Path:
        """Write a checkpoint of the current state to ``run_dir/checkpoints/<name>``."""
        epoch, batch_in_epoch = divmod(self.step, self.steps_per_epoch)
        rng = capture_rng_state(self.device)
        payload = {
            "step": self.step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "total_steps": self.total_steps,
            "samples_seen": self.step * self.section.batch_size, "world_size": self.parallel.world_size,
            "objective": self.parallel.objective_state(self.objective),
            "optimizer": self.parallel.optimizer_state(self.optimizer),
            "schedules": self.schedules.state_dict(), "monitor": self.monitor.state_dict(),
            "plan": self.plan.state_dict(), "rng": rng, "train": asdict(self.section),
        }
        rng_ranks = self.parallel.rng_states(rng)
        if rng_ranks is not None:
            payload["rng_ranks"] = rng_ranks
        path = checkpoint_dir(self.run_dir) / name
        if self.parallel.is_main:  # every rank took part in gathering the state; rank 0 writes it
            save_checkpoint(path, payload)
        self.parallel.barrier()
        self.checkpoint_path = path
        return path

    def resume(self) -> bool:
        """Restore the state of ``run_dir/checkpoints/last.pt`` if it exists; returns whether it did.

        First removes the temporary files of checkpoint writes a killed run left behind (rank 0). Without a
        checkpoint the run starts from step 0 and says so (a warning when ``train.resume`` asked for one).

        :raises CheckpointError: if the checkpoint is empty, damaged or does not fit the configured model.
        """
        if self.parallel.is_main:
            remove_stale_temp_checkpoints(self.run_dir)
        path = latest_checkpoint(self.run_dir)
        if path is None:
            where = checkpoint_dir(self.run_dir) / LAST_CHECKPOINT
            if self.section.resume:
                logger.warning("train.resume is true but there is no checkpoint to resume from (%s does not "
                               "exist): starting from step 0", where)
            else:
                logger.info("no checkpoint at %s: starting from step 0", where)
            return False
        data = load_checkpoint(path)
        self.parallel.load_objective_state(self.objective, data["objective"], path)
        try:
            self.parallel.load_optimizer_state(self.optimizer, data["optimizer"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: optimizer state does not fit the model ({exc}); the config changed "
                                  "since the checkpoint: use another run.output_dir to start a new run.") from exc
        self.schedules.load_state_dict(data["schedules"])
        self.monitor.load_state_dict(data.get("monitor", {}))
        if data.get("plan") != self.plan.state_dict():
            logger.warning("the data plan changed since the checkpoint (%s -> %s): the data order will differ from "
                           "an uninterrupted run", data.get("plan"), self.plan.state_dict())
        self.parallel.restore_rng(data, self.device)
        self.step = int(data["step"])
        samples = data.get("samples_seen")
        if samples is not None and int(samples) != self.step * self.section.batch_size:
            logger.warning("the checkpoint was written after %d samples in %d steps; train.batch_size is now %d, so "
                           "the data order differs from an uninterrupted run", int(samples), self.step,
                           self.section.batch_size)
        self.schedules.step = self.step
        self.checkpoint_path = path
        logger.info("resumed from %s at step %d/%d (epoch %d, batch %d)", path, self.step, self.total_steps,
                    data["epoch"], data["batch_in_epoch"])
        return True

    def export_teacher(self) -> Path:
        """Write the teacher backbone's state dict (CPU tensors) to ``run_dir/<teacher_file>``."""
        path = self.run_dir / self.teacher_file
        state = self.parallel.module_state(self.objective.teacher_backbone())
        if self.parallel.is_main:
            save_state_dict_atomic(state, path)
        self.parallel.barrier()  # the other ranks may read it next (embed stage)
        return path

    def _finalize(self) -> None:
        last = self.save(LAST_CHECKPOINT)
        if not self.parallel.is_main:
            return
        final = last.with_name(FINAL_CHECKPOINT)
        tmp = final.with_name(f".{FINAL_CHECKPOINT}.link")
        try:  # final.pt shares the bytes of last.pt (a later last.pt replaces its own name only)
            tmp.unlink(missing_ok=True)
            os.link(last, tmp)
            os.replace(tmp, final)
        except OSError:
            shutil.copyfile(last, final)

    # ------------------------------------------------------------------ training

    def _diverged(self, what: str, value: float, epoch: int) -> None:
        kept = latest_checkpoint(self.run_dir)
        where = (f"the last good checkpoint {kept} is kept" if kept is not None
                 else "no checkpoint had been written yet")
        raise TrainingDivergedError(
            f"training diverged at step {self.step + 1} (epoch {epoch}): the {what} is {value}; {where}. Lower "
            "train.lr, keep train.clip_grad set, try train.precision: fp32, or check the data for NaN/inf pixels; "
            "running the same command again resumes from the checkpoint."
        )

    def train_step(self, batch: dict[str, Any]) -> dict[str, Any]:
        """One optimisation step on a collated batch; returns its metrics record."""
        epoch = self.step // self.steps_per_epoch
        values = self.schedules.values()
        self.schedules.apply(self.optimizer, values)
        batch = _to_device(batch, self.device)
        with autocast(self.device, self.section.precision):
            out = self.objective(batch, teacher_temp=values.teacher_temp)
        terms = self.parallel.reduce_terms(out.terms)  # global-batch values, the same on every rank
        loss_value = terms.get("loss", float(out.loss.detach()))
        if not math.isfinite(loss_value):
            self._diverged("loss", loss_value, epoch)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = None
        if self.section.clip_grad:
            grad_norm = self.parallel.norm_value(torch.nn.utils.clip_grad_norm_(self.parameters,
                                                                                self.section.clip_grad))
            if not math.isfinite(grad_norm):
                self._diverged("gradient norm", grad_norm, epoch)
        self.optimizer.step()
        self.objective.update_teacher(values.teacher_momentum)
        self.schedules.advance()
        self.step += 1
        now = time.perf_counter()
        elapsed, self._last_tick = now - self._last_tick, now
        record: dict[str, Any] = {"step": self.step, "epoch": epoch}
        record.update(terms)
        record.update(lr=values.lr, last_layer_lr=values.last_layer_lr, wd=values.weight_decay,
                      momentum=values.teacher_momentum, teacher_temp=values.teacher_temp)
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        if out.teacher_probs is not None:
            record.update(self.monitor.update(self.step, out.teacher_probs, out.teacher_embeddings))
        record["images_per_s"] = self.objective.batch_size(batch) * self.parallel.world_size / max(elapsed, 1e-9)
        return record

    def fit(self) -> TrainResult:
        """Train until ``total_steps`` (or ``max_minutes``), resuming first when a checkpoint exists.

        Writes checkpoints, ``metrics.jsonl`` and, at the end, the teacher backbone.

        :raises TrainingDivergedError: on a NaN/inf loss or gradient norm.
        :raises CheckpointError: see :meth:`resume`.
        """
        self.objective.train()
        self.resume()
        record: dict[str, Any] = {}
        if self.step >= self.total_steps:
            logger.info("training already complete (%d/%d steps) in %s", self.step, self.total_steps, self.run_dir)
            self.export_teacher()
            return TrainResult(self.step, self.total_steps, True, False, self.checkpoint_path, record)
        tensorboard_dir = self.run_dir / "tensorboard" if self.section.tensorboard else None
        metrics = MetricsLog(self.run_dir / METRICS_FILE, tensorboard_dir) if self.parallel.is_main else None
        if metrics is not None:
            metrics.truncate_after(self.step)
        logger.info("training %s for %d steps (%d per epoch, batch %d, peak lr %.3g) on %s, %s", self.objective.name,
                    self.total_steps, self.steps_per_epoch, self.section.batch_size, self.schedules.lr.max(),
                    self.device, self.section.precision)
        deadline = time.monotonic() + 60 * self.section.max_minutes if self.section.max_minutes else math.inf
        stopped_by_time = False
        written = self.step
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step",
                   disable=not (self.section.progress and self.parallel.is_main))
        try:
            while self.step < self.total_steps and not stopped_by_time:
                epoch, start = divmod(self.step, self.steps_per_epoch)
                loader = make_loader(self.views, self.plan.batches(epoch, start), self.collate,
                                     num_workers=self.section.num_workers, seed=self.seed, epoch=epoch,
                                     pin_memory=self.device.type == "cuda")
                self._last_tick = time.perf_counter()
                for batch in loader:
                    record = self.train_step(batch)
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
                    if self.step % self.section.log_every == 0 or self.step == self.total_steps:
                        if metrics is not None:
                            metrics.write(record)
                        written = self.step
                    if self.step % self.section.checkpoint_every_steps == 0 and self.step < self.total_steps:
                        self.save(LAST_CHECKPOINT)
                    paused = time.monotonic()
                    for callback in self.callbacks:
                        callback(self, record)
                    deadline += time.monotonic() - paused  # callbacks (e.g. evaluations) do not use the budget
                    self._last_tick = time.perf_counter()  # images/s: data loading + step, not callbacks
                    if self.stop_requested:
                        logger.info("stop requested at step %d/%d", self.step, self.total_steps)
                        stopped_by_time = True
                    if time.monotonic() > deadline:
                        stopped_by_time = True
                        logger.info("train.max_minutes reached at step %d/%d", self.step, self.total_steps)
                    stopped_by_time = self.parallel.any_rank(stopped_by_time)  # every rank stops at the same step
                    if stopped_by_time or self.step >= self.total_steps:
                        break
            if record and written != self.step and metrics is not None:
                metrics.write(record)  # the last step of a run stopped early
        finally:
            bar.close()
            if metrics is not None:
                metrics.close()
        self._finalize()
        self.export_teacher()
        return TrainResult(self.step, self.total_steps, self.step >= self.total_steps, stopped_by_time,
                           self.checkpoint_path, record)
