"""The eval stage: every evaluator of ``eval:`` on the run's complete, current embeddings, with an
:class:`~cellssl.eval.base.EvalContext` that offers the run's dataset, model and embedder lazily."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from cellssl.atomic import atomic_write_json
from cellssl.errors import ConfigError
from cellssl.pipeline.embedding import eval_preprocess, expected_embedding, run_embedder, weighted_backbone
from cellssl.pipeline.run import SKIPPED_FILE, Run, resolve_weights
from cellssl.plan.checks import plan_dataset

logger = logging.getLogger(__name__)


def eval_loaders(run: Run) -> tuple[Callable[[], tuple[Any, Any]] | None, Callable[[], tuple[Any, Any]] | None]:
    """Lazy, cached loaders for evaluators that need images or the model (see :class:`EvalContext`).

    :return: ``(load_dataset, load_model)``: ``load_dataset() -> (dataset, preprocess)`` (the embed
        stage's preprocessing) and ``load_model() -> (channel strategy, backbone)`` (the run's weights,
        eval mode, on the run's device; the plain backbone, without the embed stage's feature wrapper).
        Each is ``None`` when the plan lacks ``data`` (or ``backbone``).
    """
    plan = run.require_plan()
    cache: dict[str, tuple[Any, Any]] = {}

    def load_dataset() -> tuple[Any, Any]:
        if "dataset" not in cache:
            cache["dataset"] = (plan_dataset(plan), eval_preprocess(run))
        return cache["dataset"]

    def load_model() -> tuple[Any, Any]:
        if "model" not in cache:
            dataset = plan_dataset(plan)
            backbone, _ = weighted_backbone(run, tuple(dataset.channel_names))
            cache["model"] = (plan.cache["strategy"], backbone.to(run.device).eval())
        return cache["model"]

    has_data = plan.data is not None
    has_model = has_data and plan.backbone is not None
    return (load_dataset if has_data else None), (load_model if has_model else None)


def _cached_embedder(run: Run) -> Callable[[], Any] | None:
    """A lazy, cached :func:`run_embedder` for ``EvalContext.embedder`` (``None`` without data or backbone)."""
    plan = run.require_plan()
    if plan.data is None or plan.backbone is None:
        return None
    cache: dict[str, Any] = {}

    def load() -> Any:
        if "embedder" not in cache:
            cache["embedder"] = run_embedder(run)
        return cache["embedder"]

    return load


def eval_stage(run: Run) -> list[dict[str, Any]]:
    """Run every evaluator of ``eval:`` on the run's (complete, current) embeddings; write ``eval/<name>.json``."""
    from cellssl.distributed import is_main_process
    from cellssl.embed.store import read_embeddings
    from cellssl.eval.base import EvalContext

    if not is_main_process():  # evaluation reads every rank's shards, once, on rank 0
        return []
    plan = run.require_plan()
    if not plan.evaluators:
        raise ConfigError("eval", "lists no evaluator; add e.g. `eval: [{name: knn, label_column: label}]`.")
    expected = expected_embedding(run)
    table = read_embeddings(run.run_dir / "embeddings", expected_fingerprint=expected[0] if expected else None,
                            expected_parts=expected[1] if expected else None, lazy=True)
    load_dataset, load_model = eval_loaders(run)
    dataset = plan_dataset(plan) if plan.data is not None else None
    weights = resolve_weights(run) if plan.backbone is not None else None
    context = EvalContext(
        run_dir=run.run_dir,
        label_columns=list(getattr(dataset, "label_columns", ()) or ()),
        label_separator=getattr(dataset, "label_separator", None),
        identity={"dataset": plan.data.as_dict() if plan.data else None,
                  "backbone": plan.backbone.as_dict() if plan.backbone else None,
                  "weights": str(weights) if weights is not None else None},
        load_model=load_model, load_dataset=load_dataset, embedder=_cached_embedder(run), device=str(run.device))
    skipped = int(table.manifest.get("skipped_rows", 0))
    results = []
    names_seen: dict[str, int] = {}
    for evaluator_spec in plan.evaluators:
        evaluator = evaluator_spec.build()
        logger.info("evaluating with %s", evaluator_spec.name)
        result = evaluator.evaluate(table, context)
        name = evaluator_spec.name
        names_seen[name] = names_seen.get(name, 0) + 1
        file_name = name if names_seen[name] == 1 else f"{name}_{names_seen[name]}"
        result = {"evaluator": name, **result,
                  "skipped_rows": {"count": skipped, "file": SKIPPED_FILE if skipped else None}}
        atomic_write_json(run.run_dir / "eval" / f"{file_name}.json", result)
        results.append(result)
    return results
