"""One Embedder: the embed stage and evaluators that re-embed get the same numbers for the same rows."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from cellssl.config.compose import load_run_config
from cellssl.embed.store import read_embeddings
from cellssl.pipeline import execute, run_embedder
from cellssl.plan.checks import plan_dataset


def test_the_run_embedder_reproduces_the_stored_table(runs: SimpleNamespace) -> None:
    config = runs.config(embed={"batch_size": 5, "precision": "fp32", "features": {"n_last_blocks": 2,
                                                                                     "avgpool": True}})
    run, _ = execute(load_run_config(runs.write(config), []), ["embed"])
    table = read_embeddings(runs.tmp / "run" / "embeddings")
    assert table.dim == 3 * 32 * 3  # 3 channels x (2 CLS + 1 mean patch token) x 32
    embedder = run_embedder(run)
    rows = [0, 7, 13, 23]
    again = embedder.embed_rows(plan_dataset(run.plan), rows)
    np.testing.assert_allclose(again, table.embeddings[rows], rtol=1e-5, atol=1e-6)
    images, names = embedder.preprocessed(plan_dataset(run.plan), rows[:2])
    assert images.shape == (2, 3, 40, 40) and names == ("brightfield", "dna", "darkfield")
    np.testing.assert_allclose(embedder.embed_images(images, names).numpy(), table.embeddings[rows[:2]],
                               rtol=1e-5, atol=1e-6)


def test_the_eval_stage_hands_evaluators_a_table_read_only_when_used(runs: SimpleNamespace) -> None:
    from dataclasses import dataclass
    from typing import Any

    from cellssl.eval.base import Evaluator
    from cellssl.plugins import hookimpl
    from cellssl.plugins.manager import build_plugin_state, use_plugin_state

    seen: list[Any] = []

    @dataclass
    class CountConfig:
        """``{name: row_count}``."""

    class RowCount(Evaluator):
        name = "row_count"

        def __init__(self, config: CountConfig) -> None:
            self.config = config

        def evaluate(self, table: Any, context: Any) -> dict[str, Any]:
            seen.append(table)
            return {"metrics": {"rows": len(table), "dim": table.dim}, "config": {}}

    class Plugin:
        @hookimpl
        def cellssl_register_evaluators(self, registry: Any) -> None:
            registry.add("row_count", RowCount, CountConfig, "counts rows (test)")

    state = build_plugin_state(extra_plugins=[("rows", "rows-dist", Plugin())], load_entry_points=False)
    with use_plugin_state(state):
        _, outputs = execute(load_run_config(runs.write(runs.config(eval=[{"name": "row_count"}])), []))
    assert outputs["eval"][0]["metrics"] == {"rows": 24, "dim": 96}
    assert not seen[0].loaded  # streaming evaluators never hold the whole table
