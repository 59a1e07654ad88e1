"""Linear probe on frozen features: a grid of linear heads trained together, chosen on a validation split.

Protocol of :func:`fit_linear_probe` (DINOv2 style, with the selection done honestly):

1. Validation rows: ``val_x``/``val_y`` when given, else a seeded ``val_fraction`` of the training rows,
   stratified by class when every class has at least two rows (multi-label: a plain random draw). The
   test split is never an argument of this function, so it cannot take part in the selection.
2. Features are standardised with the mean and standard deviation of the rows the heads train on, then
   divided by ``sqrt(D)`` (so an average row has norm ~1 and one learning-rate grid fits any dimension).
   Constant dimensions keep a scale of 1.
3. Every ``(learning rate, weight decay)`` pair of the grid is one head. All heads live in one weight
   matrix ``(D, H * C)`` and see the same shuffled mini-batches: one matrix product per step serves them
   all. Each head's loss is its own mean over the batch (cross-entropy for multi-class, binary
   cross-entropy on sigmoid outputs for multi-label) and the losses are summed, so head gradients stay
   independent. The update is SGD with momentum 0.9, the head's weight decay on weights (not biases)
   and a cosine learning-rate schedule from the head's rate to 0. Weights start at zero.
4. Training runs ``max(epochs * ceil(n / batch_size), min_steps)`` steps (small data sets get more passes).
5. Each head is scored on the validation rows (``select_metric``: multi-class ``macro_f1`` by default,
   or ``accuracy`` / ``balanced_accuracy``; multi-label ``mean_per_class_multilabel_f1`` (macro F1 at 0.5)
   or ``micro_f1``). The best head wins; ties go to the lower validation loss, then to grid order.
6. With ``refit=True`` the chosen ``(lr, wd)`` is trained again, alone, on train + validation rows.

Class balancing (``class_balance=True``): multi-class losses weight class ``c`` by
``n / (C_present * n_c)`` (a weighted mean); multi-label losses weight the positives of label ``l`` by
``n_negative_l / n_positive_l`` (``pos_weight``, 1 for a label without positives or negatives).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from cellssl.errors import DataError
from cellssl.eval.engines.knn import as_feature_matrix
from cellssl.eval.engines.linear_heads import head_losses, loss_weights, standardiser, train_heads
from cellssl.eval.engines.linear_options import (
    DEFAULT_LEARNING_RATES,
    DEFAULT_WEIGHT_DECAYS,
    MULTICLASS_SELECT,
    MULTILABEL_SELECT,
    PRECISIONS,
)
from cellssl.eval.engines.metrics import multiclass_metrics, multilabel_metrics

logger = logging.getLogger(__name__)

THRESHOLD = 0.5
_PREDICT_CHUNK = 65536


class ChosenHead(NamedTuple):
    """The head selected on the validation rows: ``(lr, weight_decay, val_score)``."""

    lr: float
    weight_decay: float
    val_score: float


@dataclass
class LinearProbe:
    """A fitted linear head with its feature standardisation.

    :ivar weight: ``(D, C)`` float32 weights acting on standardised features.
    :ivar bias: ``(C,)`` float32.
    :ivar mean: ``(D,)`` feature means subtracted before the head.
    :ivar scale: ``(D,)`` factors applied after subtracting ``mean``.
    :ivar multilabel: sigmoid outputs (``True``) or softmax outputs.
    :ivar chosen: the selected ``(lr, weight_decay, val_score)``.
    :ivar selection_metric: the validation metric ``chosen.val_score`` is.
    :ivar grid: one dict per head: ``lr``, ``weight_decay``, ``val_score``, ``val_loss``.
    :ivar sizes: ``train_rows`` and ``val_rows`` of the selection, ``fit_rows`` of the final head.
    :ivar refit: whether the final head was retrained on train + validation rows.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    multilabel: bool
    chosen: ChosenHead
    selection_metric: str
    grid: list[dict[str, float]] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    refit: bool = False

    @property
    def num_outputs(self) -> int:
        """Number of classes (multi-class) or labels (multi-label)."""
        return int(self.weight.shape[1])

    @torch.no_grad()
    def predict_scores(self, x: Any) -> np.ndarray:
        """``(n, C)`` float32 class probabilities (softmax) or label probabilities (sigmoid).

        :raises DataError: if ``x`` is not ``(n, D)`` with this probe's ``D``, or holds NaN / inf.
        """
        features = as_feature_matrix(x, "features to predict")
        if features.shape[1] != self.weight.shape[0]:
            raise DataError(
                f"the linear probe was fitted on {self.weight.shape[0]}-d features but got {features.shape[1]}-d"
            )
        out = np.empty((features.shape[0], self.num_outputs), dtype=np.float32)
        device = self.weight.device
        for start in range(0, features.shape[0], _PREDICT_CHUNK):
            block = torch.from_numpy(features[start : start + _PREDICT_CHUNK]).to(device)
            logits = ((block - self.mean) * self.scale) @ self.weight + self.bias
            probs = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)
            out[start : start + len(block)] = probs.cpu().numpy()
        return out

    def predict(self, x: Any) -> np.ndarray:
        """``(n,)`` int64 class indices (argmax), or ``(n, L)`` int8 0/1 (probability ``> 0.5``, torchmetrics' rule)."""
        scores = self.predict_scores(x)
        if self.multilabel:
            return (scores > THRESHOLD).astype(np.int8)
        return scores.argmax(axis=1).astype(np.int64)


def _as_labels(y: Any, n: int, multilabel: bool, what: str) -> np.ndarray:
    labels = np.asarray(y)
    if labels.shape[:1] != (n,):
        raise ValueError(f"got {labels.shape[0] if labels.ndim else 0} {what} labels for {n} rows")
    if multilabel:
        if labels.ndim != 2 or not np.isin(labels, (0, 1)).all():
            raise ValueError(f"multi-label {what} labels must be an (n, L) 0/1 matrix, got shape {labels.shape}")
        return labels.astype(np.int8)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"{what} labels must be (n,) integer class indices, got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{what} class indices must be >= 0")
    return labels.astype(np.int64)


def carve_validation(
    y: np.ndarray, val_fraction: float, seed: int, multilabel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Split row positions ``0..n-1`` into ``(fit, val)``, stratified by class when possible.

    :raises DataError: when fewer than 2 rows are given.
    :raises ValueError: when ``val_fraction`` is not in (0, 1).
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(y)
    if n < 2:
        raise DataError(f"cannot carve a validation split from {n} training row(s); give more training rows")
    n_val = min(max(1, round(val_fraction * n)), n - 1)
    stratify = None
    if not multilabel:
        _, counts = np.unique(y, return_counts=True)
        if counts.min() >= 2 and n_val >= len(counts) and n - n_val >= len(counts):
            stratify = y
        else:
            logger.warning("linear probe: validation split not stratified (%d classes, smallest has %d rows, "
                           "%d validation rows)", len(counts), int(counts.min()), n_val)
    fit, val = train_test_split(np.arange(n), test_size=n_val, random_state=seed, stratify=stratify)
    return np.sort(fit), np.sort(val)


def _score_heads(
    logits: torch.Tensor, y: np.ndarray, target: torch.Tensor, multilabel: bool, metric: str,
    balance: torch.Tensor | None,
) -> tuple[list[float], list[float]]:
    """Validation score and loss of every head; a diverged head scores ``-inf`` / ``inf``."""
    scores, losses = [], []
    per_head = head_losses(logits, target, multilabel, balance).tolist()
    for head in range(logits.shape[1]):
        head_logits = logits[:, head]
        loss = per_head[head]
        if not torch.isfinite(head_logits).all() or not math.isfinite(loss):
            scores.append(-math.inf)
            losses.append(math.inf)
            continue
        if multilabel:
            result = multilabel_metrics(y, torch.sigmoid(head_logits).numpy(), per_label=False)
        else:
            result = multiclass_metrics(y, head_logits.argmax(dim=1).numpy(), per_class=False)
        scores.append(float(result[metric]))
        losses.append(float(loss))
    return scores, losses


def _check_grid(learning_rates: Sequence[float], weight_decays: Sequence[float]) -> None:
    if not learning_rates or min(learning_rates) <= 0:
        raise ValueError(f"learning_rates must be a non-empty list of values > 0, got {list(learning_rates)}")
    if not weight_decays or min(weight_decays) < 0:
        raise ValueError(f"weight_decays must be a non-empty list of values >= 0, got {list(weight_decays)}")


def fit_linear_probe(
    train_x: Any,
    train_y: Any,
    *,
    multilabel: bool,
    val_x: Any = None,
    val_y: Any = None,
    val_fraction: float = 0.2,
    learning_rates: Sequence[float] = DEFAULT_LEARNING_RATES,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    epochs: int = 10,
    batch_size: int = 256,
    class_balance: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
    select_metric: str | None = None,
    refit: bool = True,
    min_steps: int = 300,
    precision: str = "fp32",
) -> LinearProbe:
    """Fit a grid of linear heads on ``train_x`` and keep the one that scores best on validation rows.

    See the module docstring for the protocol.

    :param train_x: ``(n, D)`` features. :param train_y: ``(n,)`` class indices, or ``(n, L)`` 0/1 when
        ``multilabel``.
    :param val_x: ``(m, D)`` validation features (with ``val_y``); ``None``: carve ``val_fraction`` of the
        training rows.
    :param learning_rates: the grid's learning rates (for features scaled to norm ~1).
    :param weight_decays: the grid's L2 weight decays.
    :param epochs: passes over the training rows (at least ``min_steps`` steps are run).
    :param num_classes: ``C`` for multi-class (default ``max(label) + 1``).
    :param select_metric: validation metric (see the module docstring); ``None``: macro F1.
    :param refit: retrain the chosen head on train + validation rows.
    :param min_steps: minimum number of SGD steps.
    :param precision: ``fp32``, or ``bf16`` for the training matrix products (several times faster on
        CPUs with AMX / AVX512-BF16 and on GPUs; slower on CPUs without bfloat16 support).
    :return: the fitted :class:`LinearProbe`.
    :raises DataError: for features that are not 2-D / finite, or too few rows to carve a validation split.
    :raises ValueError: for malformed labels or settings (grid, epochs, batch size, metric).
    """
    _check_grid(learning_rates, weight_decays)
    if epochs < 1 or batch_size < 1 or min_steps < 0:
        raise ValueError(f"epochs and batch_size must be >= 1 and min_steps >= 0, got {epochs}, {batch_size}, "
                         f"{min_steps}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    choices = MULTILABEL_SELECT if multilabel else MULTICLASS_SELECT
    metric = select_metric or choices[0]
    if metric not in choices:
        raise ValueError(f"select_metric must be one of {choices} for this task, got {metric!r}")
    features = as_feature_matrix(train_x, "training features")
    labels = _as_labels(train_y, features.shape[0], multilabel, "training")
    if (val_x is None) != (val_y is None):
        raise ValueError("give both val_x and val_y, or neither")
    if val_x is None:
        fit_rows, val_rows = carve_validation(labels, val_fraction, seed, multilabel)
        fit_x, fit_y, v_x, v_y = features[fit_rows], labels[fit_rows], features[val_rows], labels[val_rows]
    else:
        fit_x, fit_y = features, labels
        v_x = as_feature_matrix(val_x, "validation features")
        v_y = _as_labels(val_y, v_x.shape[0], multilabel, "validation")
        if v_x.shape[1] != fit_x.shape[1]:
            raise DataError(f"validation features are {v_x.shape[1]}-d but training features {fit_x.shape[1]}-d")
    if multilabel:
        outputs = labels.shape[1]
    else:
        seen = max(int(labels.max()), int(v_y.max()) if v_y.size else 0) + 1
        outputs = int(num_classes) if num_classes is not None else seen
        if outputs < seen:
            raise ValueError(f"class index {seen - 1} is out of range for num_classes={outputs}")
    device = torch.device(device)
    grid = [(float(lr), float(wd)) for lr in learning_rates for wd in weight_decays]
    lrs = torch.tensor([g[0] for g in grid], device=device)
    wds = torch.tensor([g[1] for g in grid], device=device)

    def to_target(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(y.astype(np.float32) if multilabel else y).to(device)

    def train(x_np: np.ndarray, y_np: np.ndarray, lr_t: torch.Tensor, wd_t: torch.Tensor) -> tuple[Any, ...]:
        x = torch.from_numpy(x_np).to(device)
        mean, scale = standardiser(x)
        balance = loss_weights(y_np, outputs, multilabel, device) if class_balance else None
        weight, bias = train_heads((x - mean) * scale, to_target(y_np), lr_t, wd_t, outputs,
                                    multilabel=multilabel, balance=balance, epochs=epochs,
                                    batch_size=batch_size, min_steps=min_steps, seed=seed, precision=precision)
        return weight, bias, mean, scale, balance

    weight, bias, mean, scale, balance = train(fit_x, fit_y, lrs, wds)
    with torch.no_grad():
        val_logits = torch.einsum("nd,dhc->nhc", (torch.from_numpy(v_x).to(device) - mean) * scale, weight) + bias
    scores, losses = _score_heads(val_logits.cpu(), v_y, to_target(v_y).cpu(), multilabel, metric,
                                  None if balance is None else balance.cpu())
    best = min(range(len(grid)), key=lambda h: (-scores[h], losses[h], h))
    if not math.isfinite(scores[best]):
        raise DataError("every head of the linear-probe grid diverged; lower learning_rates")
    chosen = ChosenHead(grid[best][0], grid[best][1], scores[best])
    table = [{"lr": lr, "weight_decay": wd, "val_score": s, "val_loss": v}
             for (lr, wd), s, v in zip(grid, scores, losses)]
    logger.info("linear probe: chose lr=%g wd=%g (val %s %.4f) among %d heads", chosen.lr, chosen.weight_decay,
                metric, chosen.val_score, len(grid))
    sizes = {"train_rows": len(fit_x), "val_rows": len(v_x), "fit_rows": len(fit_x)}
    final_w, final_b = weight[:, best], bias[best]
    if refit:
        all_x, all_y = np.concatenate([fit_x, v_x]), np.concatenate([fit_y, v_y])
        refit_w, refit_b, mean, scale, _ = train(all_x, all_y, lrs[best : best + 1], wds[best : best + 1])
        final_w, final_b = refit_w[:, 0], refit_b[0]
        sizes["fit_rows"] = len(all_x)
    return LinearProbe(weight=final_w.contiguous(), bias=final_b.contiguous(), mean=mean, scale=scale,
                       multilabel=multilabel, chosen=chosen, selection_metric=metric, grid=table,
                       sizes=sizes, refit=refit)
