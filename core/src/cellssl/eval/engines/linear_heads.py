"""The training engine of :mod:`cellssl.eval.engines.linear_probe`: a grid of linear heads trained together by SGD.

All heads share one weight matrix ``(D, H * C)``; a step is one product for the logits of every head and
one for the gradients of every head (the loss gradients are written out, softmax / sigmoid minus target).
Each head has its own learning rate and weight decay (applied to weights, not biases), SGD momentum
:data:`MOMENTUM` and a cosine schedule from its rate to 0. Losses are each head's mean over the batch
(cross-entropy, or binary cross-entropy averaged over labels), optionally class-balanced.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

MOMENTUM = 0.9
PROB_FLOOR = 1e-20
_DENORMAL_SWEEP = 50  # every this many steps, momentum entries below 1e-30 are set to 0


def standardiser(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False) if x.shape[0] > 1 else torch.ones_like(mean)
    std = torch.where(std > 1e-6 * (std.max() + 1e-12), std, torch.ones_like(std))
    return mean, 1.0 / (std * math.sqrt(x.shape[1]))


def loss_weights(y: np.ndarray, num_outputs: int, multilabel: bool, device: torch.device) -> torch.Tensor:
    """Class weights (multi-class) or positive weights (multi-label) of class balancing."""
    if multilabel:
        positives = y.sum(axis=0).astype(np.float64)
        negatives = len(y) - positives
        weights = np.where((positives > 0) & (negatives > 0), negatives / np.maximum(positives, 1), 1.0)
    else:
        counts = np.bincount(y, minlength=num_outputs).astype(np.float64)
        present = counts > 0
        weights = np.where(present, len(y) / (present.sum() * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32, device=device)


def head_losses(
    logits: torch.Tensor, target: torch.Tensor, multilabel: bool, balance: torch.Tensor | None
) -> torch.Tensor:
    """Per-head mean loss ``(H,)`` of ``logits`` ``(B, H, C)``."""
    batch, heads, outputs = logits.shape
    if multilabel:
        expanded = target.unsqueeze(1).expand(batch, heads, outputs)
        per = F.binary_cross_entropy_with_logits(logits, expanded, pos_weight=balance, reduction="none")
        return per.mean(dim=(0, 2))
    expanded = target.unsqueeze(1).expand(batch, heads)
    per = F.cross_entropy(logits.permute(0, 2, 1), expanded, weight=balance, reduction="none")
    if balance is None:
        return per.mean(dim=0)
    return per.sum(dim=0) / balance[target].sum()


def logit_gradient(
    logits: torch.Tensor, target: torch.Tensor, multilabel: bool, balance: torch.Tensor | None
) -> torch.Tensor:
    """Gradient of the summed per-head mean losses (as :func:`head_losses`) w.r.t. ``logits`` ``(B, H, C)``.

    Probabilities are floored at :data:`PROB_FLOOR` so that no denormal number reaches the matrix products
    (on x86 CPUs, arithmetic on denormals is tens of times slower; a well-separated class drives its
    softmax outputs below 1e-38 within a few epochs).
    """
    batch, _, outputs = logits.shape
    if multilabel:
        probs = torch.sigmoid(logits).clamp_min_(PROB_FLOOR)
        target = target.unsqueeze(1)
        if balance is None:
            return (probs - target) / (batch * outputs)
        positive = balance * target  # d/dz of -[w y log s + (1 - y) log(1 - s)] = s (w y + 1 - y) - w y
        return (probs * (positive + 1 - target) - positive) / (batch * outputs)
    grad = torch.softmax(logits, dim=2).clamp_min_(PROB_FLOOR)
    grad.scatter_add_(2, target.view(batch, 1, 1).expand(batch, grad.shape[1], 1),
                      torch.full((batch, grad.shape[1], 1), -1.0, dtype=grad.dtype, device=grad.device))
    if balance is None:
        return grad / batch
    row_weights = balance[target]
    return grad * (row_weights / row_weights.sum()).view(batch, 1, 1)


def train_heads(
    x: torch.Tensor,
    y: torch.Tensor,
    lrs: torch.Tensor,
    wds: torch.Tensor,
    num_outputs: int,
    *,
    multilabel: bool,
    balance: torch.Tensor | None,
    epochs: int,
    batch_size: int,
    min_steps: int,
    seed: int,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train ``H = len(lrs)`` heads on standardised ``x``; returns weights ``(D, H, C)`` and biases ``(H, C)``.

    The loss gradients are written out (softmax / sigmoid minus target), so a step is two matrix products;
    with ``precision="bf16"`` both run in bfloat16 (weights, momentum and softmax stay float32).
    """
    n, dim = x.shape
    heads = lrs.numel()
    batch_size = min(batch_size, n)
    per_epoch = math.ceil(n / batch_size)
    total = max(epochs * per_epoch, min_steps)
    weight = torch.zeros(dim, heads * num_outputs, device=x.device)
    bias = torch.zeros(heads * num_outputs, device=x.device)
    lr_cols = lrs.repeat_interleave(num_outputs)
    wd_cols = wds.repeat_interleave(num_outputs)
    momentum_w, momentum_b = torch.zeros_like(weight), torch.zeros_like(bias)
    low = precision == "bf16"
    has_decay = bool((wds > 0).any())
    source = x.to(torch.bfloat16) if low else x
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).to(x.device)
    position = 0
    for step in range(total):
        if position >= n:
            order = torch.randperm(n, generator=generator).to(x.device)
            position = 0
        rows = order[position : position + batch_size]
        position += batch_size
        batch = source[rows]
        logits = (batch @ weight.to(torch.bfloat16)).float().add_(bias) if low else torch.addmm(bias, batch, weight)
        logits = logits.view(len(rows), heads, num_outputs)
        grad = logit_gradient(logits, y[rows], multilabel, balance).view(len(rows), heads * num_outputs)
        step_size = lr_cols * (0.5 * (1.0 + math.cos(math.pi * step / total)))
        if low:
            momentum_w.mul_(MOMENTUM).add_((batch.T @ grad.to(torch.bfloat16)).float())
        else:
            momentum_w.addmm_(batch.T, grad, beta=MOMENTUM)
        if has_decay:
            momentum_w.addcmul_(wd_cols, weight)
        momentum_b.mul_(MOMENTUM).add_(grad.sum(dim=0))
        if step % _DENORMAL_SWEEP == _DENORMAL_SWEEP - 1:  # entries that only decay would turn denormal
            momentum_w.masked_fill_(momentum_w.abs() < 1e-30, 0.0)
        weight.addcmul_(step_size, momentum_w, value=-1.0)
        bias.addcmul_(step_size, momentum_b, value=-1.0)
    if not torch.isfinite(weight).all():
        logger.info("linear probe: some heads diverged (non-finite weights); they score as worst")
    return weight.view(dim, heads, num_outputs), bias.view(heads, num_outputs)
