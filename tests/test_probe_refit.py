"""The linear probe's refit: the chosen ``(lr, weight decay)`` is trained again on train + validation rows.

Features are per-channel intensity statistics of real Jurkat cells (``../shared/data``), labels their
cell-cycle phase. The refit probe must be exactly the probe that a fresh call trains alone on the train +
validation rows with the chosen hyper-parameters, and clearly not the head trained on the fit rows only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from cellssl.eval.engines.linear_probe import LinearProbe, carve_validation, fit_linear_probe

PHASES = ["G1", "S_phase", "G2", "Prophase"]
GRID = {"learning_rates": [0.1, 1.0, 10.0], "weight_decays": [0.0, 1e-3], "epochs": 5, "min_steps": 60,
        "batch_size": 32}


@pytest.fixture(scope="module")
def cell_features(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 12)`` float32 features (mean, std, 10th and 90th percentile of each channel) and phase indices."""
    root = shared_data / "jurkat-cellcycle"
    meta = pd.read_csv(root / "metadata.csv")
    rows = pd.concat([meta[meta["phase"] == phase].iloc[:45] for phase in PHASES])
    feats = []
    for path in rows["path"]:
        image = tifffile.imread(root / path).reshape(3, -1).astype(np.float64) / 65535.0
        feats.append(np.concatenate([image.mean(1), image.std(1), *np.percentile(image, [10, 90], axis=1)]))
    labels = rows["phase"].map({p: i for i, p in enumerate(PHASES)}).to_numpy(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    return np.asarray(feats, dtype=np.float32)[order], labels[order]


def _alone(x: np.ndarray, y: np.ndarray, probe: LinearProbe, val_x: np.ndarray, val_y: np.ndarray,
           seed: int = 0) -> LinearProbe:
    """The chosen head trained alone on ``x`` (no grid, no refit; ``seed`` orders the mini-batches)."""
    return fit_linear_probe(x, y, multilabel=False, val_x=val_x, val_y=val_y, seed=seed,
                            learning_rates=[probe.chosen.lr],
                            weight_decays=[probe.chosen.weight_decay], refit=False,
                            **{k: v for k, v in GRID.items() if k not in ("learning_rates", "weight_decays")})


def _same_probe(a: LinearProbe, b: LinearProbe) -> None:
    for name in ("weight", "bias", "mean", "scale"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=1e-6, msg=name)


def _differs(a: LinearProbe, b: LinearProbe) -> float:
    return float((a.weight - b.weight).abs().max())


def test_refit_with_a_validation_set_equals_the_head_trained_alone_on_train_plus_validation(
        cell_features: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = cell_features
    train_x, train_y, val_x, val_y = x[:100], y[:100], x[100:140], y[100:140]
    probe = fit_linear_probe(train_x, train_y, multilabel=False, val_x=val_x, val_y=val_y, **GRID)
    assert probe.refit and probe.sizes == {"train_rows": 100, "val_rows": 40, "fit_rows": 140}
    both = _alone(np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y]), probe, val_x, val_y)
    _same_probe(probe, both)
    # the standardisation was fitted on all 140 rows, not on the 100 training rows
    torch.testing.assert_close(probe.mean, torch.from_numpy(x[:140].mean(0)), rtol=0, atol=1e-6)
    fit_only = _alone(train_x, train_y, probe, val_x, val_y)
    assert _differs(probe, fit_only) > 1e-2  # training on the fit rows only gives another head
    test_x = x[140:]
    np.testing.assert_array_equal(probe.predict(test_x), both.predict(test_x))


def test_refit_after_carving_validation_rows_uses_every_training_row(
        cell_features: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = cell_features
    probe = fit_linear_probe(x, y, multilabel=False, val_fraction=0.25, seed=3, **GRID)
    fit_rows, val_rows = carve_validation(y, 0.25, 3, multilabel=False)
    assert probe.sizes == {"train_rows": len(fit_rows), "val_rows": len(val_rows), "fit_rows": len(y)}
    assert len(val_rows) == 45 and len(fit_rows) == 135
    everything = _alone(np.concatenate([x[fit_rows], x[val_rows]]), np.concatenate([y[fit_rows], y[val_rows]]),
                        probe, x[val_rows], y[val_rows], seed=3)
    _same_probe(probe, everything)
    fit_only = _alone(x[fit_rows], y[fit_rows], probe, x[val_rows], y[val_rows], seed=3)
    assert _differs(probe, fit_only) > 1e-2


def test_without_refit_the_probe_is_the_grid_head_trained_on_the_fit_rows(
        cell_features: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = cell_features
    train_x, train_y, val_x, val_y = x[:100], y[:100], x[100:140], y[100:140]
    probe = fit_linear_probe(train_x, train_y, multilabel=False, val_x=val_x, val_y=val_y,
                             **{**GRID, "learning_rates": [1.0], "weight_decays": [0.0]}, refit=False)
    assert not probe.refit and probe.sizes == {"train_rows": 100, "val_rows": 40, "fit_rows": 100}
    _same_probe(probe, _alone(train_x, train_y, probe, val_x, val_y))
