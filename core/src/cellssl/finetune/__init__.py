"""Supervised fine-tuning on top of SSL: the ``finetune`` stage (:mod:`cellssl.finetune.stage`).

:mod:`~cellssl.finetune.config` (the ``finetune:`` section, torch-free), :mod:`~cellssl.finetune.data` (labels,
splits, images), :mod:`~cellssl.finetune.model` (head on the channel strategy's embedding, parameter groups),
:mod:`~cellssl.finetune.loop` (epochs, validation, early stopping, checkpoints, resume).
"""
