"""The ``finetune`` stage: a supervised classifier on the run's backbone, selected on validation, scored once on test.

Reads the checked plan (dataset, channel strategy, backbone with ``weights:`` or the run's trained teacher,
``normalize`` and ``embed.img_size`` preprocessing, the ``finetune:`` section) and writes::

    <run_dir>/finetune/checkpoints/last.pt   after every epoch (atomic; a re-run resumes from it)
    <run_dir>/finetune/backbone.pt           the selected epoch's backbone state dict (usable as `weights:`)
    <run_dir>/finetune/head.pt               {"state_dict", "head", "in_dim", "classes", "multilabel",
                                              "thresholds", "feature_mean", "feature_scale", "channels"}
    <run_dir>/eval/finetune.json             the standard eval result (metrics, per_class, chosen, history)

Features entering the head are standardised with the mean and standard deviation of the fit rows' starting
features (fixed buffers, as the linear probe standardises). With ``freeze_backbone`` the features of every
labelled row are computed once and the head trains on the fit rows' features; otherwise the whole model trains.
Under torchrun (``WORLD_SIZE > 1``) the trained module (the whole classifier, or the head alone) goes through
``DistributedDataParallel`` and each rank trains on its share of every batch (:mod:`cellssl.finetune.loop`);
every rank holds the same images and computes the same validation and test predictions, and rank 0 alone
writes the checkpoint, the exports and ``eval/finetune.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cellssl.errors import ConfigError
from cellssl.finetune.config import FinetuneSection

if TYPE_CHECKING:
    from cellssl.pipeline import Run

logger = logging.getLogger(__name__)

FINETUNE_DIR = "finetune"


class Standardize(nn.Module):
    """``(x - mean) * scale`` with fixed buffers (``scale = 1 / std``; constant dimensions keep scale 1)."""

    def __init__(self, features: torch.Tensor) -> None:
        super().__init__()
        mean = features.mean(dim=0)
        std = features.std(dim=0, unbiased=False) if len(features) > 1 else torch.ones_like(mean)
        std = torch.where(std > 1e-6 * (std.max() + 1e-12), std, torch.ones_like(std))
        self.register_buffer("mean", mean)
        self.register_buffer("scale", 1.0 / std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.scale


def _features(model: Any, images: torch.Tensor, device: torch.device, precision: str) -> torch.Tensor:
    from cellssl.embed.export import autocast_context

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            with autocast_context(device, precision):
                out.append(model.features(images[start : start + 256].to(device)).float().cpu())
    return torch.cat(out)


def _flip(images: torch.Tensor) -> torch.Tensor:
    """Random horizontal and vertical flips per image (torch's global RNG, seeded per epoch by the loop)."""
    h = torch.rand(len(images)) < 0.5
    v = torch.rand(len(images)) < 0.5
    images = torch.where(h.to(images.device)[:, None, None, None], images.flip(-1), images)
    return torch.where(v.to(images.device)[:, None, None, None], images.flip(-2), images)


def select_metric(section: FinetuneSection, multilabel: bool) -> str:
    """The validation metric (``select_metric`` or the task's default).

    :raises ConfigError: naming ``finetune.select_metric`` when it does not fit the task.
    """
    from cellssl.eval.linear_config import MULTICLASS_SELECT, MULTILABEL_SELECT

    allowed = MULTILABEL_SELECT if multilabel else MULTICLASS_SELECT
    metric = section.select_metric or allowed[0]
    if metric not in allowed:
        raise ConfigError("finetune.select_metric", f"'{metric}' does not fit this task; use one of {allowed}")
    return metric


def finetune_run(run: Run, stop_after: int | None = None) -> dict[str, Any]:
    """Fine-tune, select on validation, score the test rows once, export; returns the result dict.

    :param stop_after: stop after this many epochs in total, leaving the checkpoint as a kill would (tests).
    :raises ConfigError: without a ``finetune:`` section, a bad split or metric.
    :raises cellssl.errors.DataError: unusable labels, an empty side.
    :raises cellssl.errors.CheckpointError: a checkpoint of another config in ``finetune/checkpoints``.
    """
    from cellssl.eval.base import write_result_json
    from cellssl.eval.classifier import labels_summary
    from cellssl.eval.engines.linear_heads import loss_weights
    from cellssl.finetune.data import finetune_rows, load_images
    from cellssl.finetune.loop import FinetuneLoop, choose_thresholds, score
    from cellssl.finetune.model import Classifier, optimizer_groups
    from cellssl.models.checkpoint import save_state_dict_atomic
    from cellssl.pipeline import eval_preprocess, weighted_backbone
    from cellssl.plan.checks import plan_dataset
    from cellssl.train.distributed import barrier, get_world_size, is_main_process

    plan = run.require_plan()
    section: FinetuneSection | None = getattr(plan, "finetune", None)
    if section is None:
        raise ConfigError("finetune", "is required by the finetune stage, e.g. `finetune: {label_column: phase}`.")
    device = run.device
    dataset = plan_dataset(plan)
    channels = tuple(dataset.channel_names)
    rows = finetune_rows(section, dataset.metadata, list(getattr(dataset, "label_columns", ()) or ()),
                         getattr(dataset, "label_separator", None))
    labels = rows.labels
    metric = select_metric(section, labels.multilabel)
    backbone, weights = weighted_backbone(run, channels)
    backbone = copy.deepcopy(backbone).to(device)  # the plan's cached backbone stays as loaded
    images = load_images(dataset, eval_preprocess(run), rows.rows)
    strategy = plan.cache["strategy"]
    probe = Classifier(strategy, backbone, channels, 1, 1, section).to(device)
    if section.linear_probe_baseline:  # the starting features of every row, before any weight changes
        all_start = _features(probe, images, device, section.precision)
        start_features = all_start[torch.as_tensor(rows.fit)]
    else:
        start_features = _features(probe, images[torch.as_tensor(rows.fit)], device, section.precision)
    num_outputs = len(labels.names)
    with torch.random.fork_rng(devices=[]):  # the head's initial weights follow finetune.seed, not the process
        torch.manual_seed(section.seed)
        model = Classifier(strategy, backbone, channels, start_features.shape[1], num_outputs, section).to(device)
    model.head = nn.Sequential(Standardize(start_features), model.head).to(device)
    if section.freeze_backbone:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        features = _features(model, images, device, section.precision)  # every labelled row, computed once
        inputs, trained = features, model.head
        augment = None
    else:
        inputs, trained = images, model
        augment = _flip if section.flip else None
    parallel = _data_parallel(trained, device) if get_world_size() > 1 else trained

    def forward(x: torch.Tensor, train: bool) -> torch.Tensor:
        return parallel(x) if train else trained(x)
    fit_y, val_y = rows.y(rows.fit), rows.y(rows.val)
    weight = None
    if section.class_balance == "weights":
        weight = loss_weights(fit_y, num_outputs, labels.multilabel, device)
    if section.class_balance == "sampler" and labels.multilabel:
        raise ConfigError("finetune.class_balance", "'sampler' is for multi-class labels; use 'weights'.")
    out_dir = run.run_dir / FINETUNE_DIR
    signature = {"section": dataclasses.asdict(section), "rows": int(rows.rows.size), "classes": list(labels.names),
                 "weights": str(weights) if weights else None, "channels": list(channels)}
    loop = FinetuneLoop(trained, optimizer_groups(model, section), forward, section,
                        (inputs[torch.as_tensor(rows.fit)], fit_y), (inputs[torch.as_tensor(rows.val)], val_y),
                        multilabel=labels.multilabel, names=list(labels.names), metric=metric,
                        checkpoint_dir=out_dir / "checkpoints", signature=signature, augment=augment,
                        loss_weight=weight, device=device)
    state = loop.run(stop_after=stop_after)
    if stop_after is not None and state.epoch >= stop_after and state.epoch < section.epochs \
            and not (section.patience and state.bad_epochs >= section.patience):
        return {"stopped_after": state.epoch}
    assert state.best_state is not None
    trained.load_state_dict(state.best_state)
    thresholds = None
    if labels.multilabel:
        val_probabilities = 1.0 / (1.0 + np.exp(-loop.predict(loop.val_x)))
        thresholds = choose_thresholds(val_y, val_probabilities)
    # The test rows are used here, once, after the epoch (and thresholds) are chosen on validation rows.
    test_logits = loop.predict(inputs[torch.as_tensor(rows.test)])
    _, report = score(rows.y(rows.test), test_logits, labels.multilabel, list(labels.names), metric, thresholds,
                      per_class=section.per_class_report)
    exports = {"backbone": out_dir / "backbone.pt", "head": out_dir / "head.pt"}
    if is_main_process():
        _export(model, exports, section, labels, thresholds, channels, save_state_dict_atomic)
    from cellssl.eval.engines.metrics import HEADLINE_MULTICLASS, HEADLINE_MULTILABEL

    names = HEADLINE_MULTILABEL if labels.multilabel else HEADLINE_MULTICLASS
    result: dict[str, Any] = {
        "evaluator": "finetune",
        "task": "multilabel" if labels.multilabel else "multiclass",
        "metrics": {name: report[name] for name in names},
        "chosen": {"epoch": state.best_epoch + 1, "val_score": state.best_score, "metric": metric,
                   "epochs_run": state.epoch, "thresholds": thresholds.tolist() if thresholds is not None else None},
        "history": state.history,
        "labels": labels_summary(labels, len(dataset.metadata), section),
        "split": {"mode": section.split.mode, **rows.sizes()},
        "mode": "head_only" if section.freeze_backbone else "end_to_end",
        "world_size": get_world_size(),
        "exports": {k: str(Path(v).relative_to(run.run_dir)) for k, v in exports.items()},
        "config": dataclasses.asdict(section),
        "identity": {"dataset": plan.data.as_dict() if plan.data else None,
                     "backbone": plan.backbone.as_dict() if plan.backbone else None,
                     "weights": str(weights) if weights else None},
    }
    for key in ("per_class", "per_label"):
        if key in report:
            result[key] = report[key]
    if section.linear_probe_baseline:
        result["baseline_linear_probe"] = _linear_probe_baseline(all_start.numpy(), rows, labels, section, metric,
                                                                 names)
    if is_main_process():
        write_result_json(result, run.run_dir, "finetune")
    barrier()
    logger.info("finetune (%s): test %s", result["mode"], {k: round(v, 4) for k, v in result["metrics"].items()})
    return result


def _linear_probe_baseline(features: np.ndarray, rows: Any, labels: Any, section: FinetuneSection, metric: str,
                           names: tuple[str, ...]) -> dict[str, Any]:
    """The ``linear`` evaluator's probe on the starting features: fitted on the fit rows, its grid head chosen
    on the validation rows (then refitted on both, as the evaluator does), scored once on the test rows."""
    from cellssl.eval.engines.linear_probe import fit_linear_probe
    from cellssl.eval.engines.metrics import multiclass_metrics, multilabel_metrics

    multilabel, classes = bool(labels.multilabel), list(labels.names)
    probe = fit_linear_probe(features[rows.fit], rows.y(rows.fit), multilabel=multilabel,
                             val_x=features[rows.val], val_y=rows.y(rows.val), seed=section.seed,
                             num_classes=None if multilabel else len(classes), select_metric=metric)
    predicted = probe.predict(features[rows.test])
    if multilabel:
        report = multilabel_metrics(rows.y(rows.test), predicted, classes)
    else:
        report = multiclass_metrics(rows.y(rows.test), predicted, classes)
    return {"metrics": {name: report[name] for name in names},
            "chosen": {"lr": probe.chosen.lr, "weight_decay": probe.chosen.weight_decay,
                       "val_score": probe.chosen.val_score, "metric": probe.selection_metric},
            "sizes": dict(probe.sizes), "refit": bool(probe.refit)}


def _data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` (unused parameters allowed: the ViT's mask token gets no
    gradient); the state dicts stay those of ``module``."""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)


def _export(model: Any, paths: dict[str, Path], section: FinetuneSection, labels: Any, thresholds: np.ndarray | None,
            channels: tuple[str, ...], save: Any) -> None:
    backbone_path, head_path = paths["backbone"], paths["head"]
    save({k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}, backbone_path)
    standardize, head = model.head[0], model.head[1]
    save({"state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()}, "head": section.head,
          "hidden_dim": section.hidden_dim, "in_dim": int(standardize.mean.numel()), "classes": list(labels.names),
          "multilabel": bool(labels.multilabel), "channels": list(channels),
          "thresholds": torch.tensor(thresholds if thresholds is not None else [0.5] * len(labels.names)),
          "feature_mean": standardize.mean.detach().cpu(), "feature_scale": standardize.scale.detach().cpu()},
         head_path)


def finetune_stage(run: Run) -> Path:
    """The pipeline's ``finetune`` stage: :func:`finetune_run`; returns ``run_dir/eval/finetune.json``."""
    finetune_run(run)
    return run.run_dir / "eval" / "finetune.json"
