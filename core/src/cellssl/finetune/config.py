"""The ``finetune:`` section of a run config (:class:`FinetuneSection`), importable without torch.

YAML::

    finetune:
      label_column: phase
      split: {mode: fraction, test_fraction: 0.3, seed: 0}   # train / test rows (test scored once)
      val_fraction: 0.2            # validation rows carved from the training rows (as the linear probe does)
      head: linear                 # linear | mlp
      freeze_backbone: false       # true: features computed once, the head trained on them
      epochs: 10
      lr: 1.0e-3                   # the head's
      backbone_lr: 1.0e-4          # the final norm's; block i of L: times layer_decay ** (L - i)
      layer_decay: 0.75
      class_balance: none          # none | weights | sampler
      patience: 3                  # early stopping on the validation score
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cellssl.eval.classifier import LabelSettings
from cellssl.eval.engines.splits import SplitConfig

HEADS = ("linear", "mlp")
CLASS_BALANCE = ("none", "weights", "sampler")
SELECT_METRICS = ("macro_f1", "accuracy", "balanced_accuracy", "mean_per_class_multilabel_f1", "micro_f1")
PRECISIONS = ("fp32", "bf16")


@dataclass
class FinetuneSection(LabelSettings):
    """``finetune:`` — a supervised classifier on the channel strategy's embedding (label keys: see
    :class:`~cellssl.eval.classifier.LabelSettings`).

    :ivar keep_classes: single-label tasks: only rows whose ``label_column`` value is one of these take part
        (e.g. the four large Jurkat phases); empty: every labelled row.
    :ivar split: train / test split of the labelled rows; the test side is scored once, at the end.
    :ivar val_split: split of the training rows into fit / validation rows (its ``test`` side validates);
        ``None``: a stratified ``val_fraction`` of the training rows (the linear probe's carve, same seed).
    :ivar val_fraction: see ``val_split``.
    :ivar head: ``linear`` or ``mlp`` (Linear-GELU-Dropout-Linear with ``hidden_dim`` units).
    :ivar hidden_dim: hidden units of the ``mlp`` head.
    :ivar dropout: dropout before the head's last layer.
    :ivar freeze_backbone: train the head only, on features computed once (no augmentation).
    :ivar epochs: maximum passes over the fit rows.
    :ivar batch_size: rows per step.
    :ivar lr: peak learning rate of the head (AdamW, cosine decay to 0 over ``epochs``).
    :ivar backbone_lr: peak learning rate of the backbone's final norm; block ``i`` (0-based) of ``L`` gets
        ``backbone_lr * layer_decay ** (L - i)``, the patch embedding and tokens ``* layer_decay ** (L + 1)``
        (a backbone without ViT blocks: ``backbone_lr`` everywhere).
    :ivar layer_decay: layer-wise learning-rate decay in ``(0, 1]``.
    :ivar weight_decay: AdamW weight decay (none on biases, norms and tokens).
    :ivar class_balance: ``weights`` (loss weights ``n / (C * n_c)``; multi-label: ``pos_weight``),
        ``sampler`` (rows drawn with probability ``1 / n_c``, multi-class only) or ``none``.
    :ivar select_metric: validation score for early stopping and model selection; empty: ``macro_f1``
        (multi-class) or ``mean_per_class_multilabel_f1`` (multi-label).
    :ivar patience: epochs without a better validation score before stopping (0: never stop early).
    :ivar flip: random horizontal and vertical flips of the training images (end-to-end only).
    :ivar precision: ``fp32`` or ``bf16`` autocast.
    :ivar seed: seed of the validation carve, the batch order, flips and dropout.
    :ivar per_class_report: include per-class precision / recall / F1 / support.
    :ivar linear_probe_baseline: also fit the ``linear`` evaluator's probe
        (:func:`cellssl.eval.engines.linear_probe.fit_linear_probe`, its default grid, selected on the same
        validation rows) on the starting backbone's features of the same fit rows, and score it on the same test rows
        (``baseline_linear_probe`` in the result).
    """

    keep_classes: list[str] = field(default_factory=list)
    split: SplitConfig = field(default_factory=SplitConfig)
    val_split: SplitConfig | None = None
    val_fraction: float = 0.2
    head: str = "linear"
    hidden_dim: int = 256
    dropout: float = 0.0
    freeze_backbone: bool = False
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1.0e-3
    backbone_lr: float = 1.0e-4
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    class_balance: str = "none"
    select_metric: str = ""
    patience: int = 3
    flip: bool = True
    precision: str = "fp32"
    seed: int = 0
    per_class_report: bool = True
    linear_probe_baseline: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.split, dict):
            self.split = SplitConfig(**self.split)
        if isinstance(self.val_split, dict):
            self.val_split = SplitConfig(**self.val_split)
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.hidden_dim < 1 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("hidden_dim must be >= 1 and dropout in [0, 1)")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.lr <= 0 or self.backbone_lr < 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0, backbone_lr and weight_decay >= 0")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.class_balance not in CLASS_BALANCE:
            raise ValueError(f"class_balance must be one of {', '.join(CLASS_BALANCE)}, got {self.class_balance!r}")
        if self.select_metric and self.select_metric not in SELECT_METRICS:
            raise ValueError(f"select_metric must be empty or one of {', '.join(SELECT_METRICS)}, "
                             f"got {self.select_metric!r}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
