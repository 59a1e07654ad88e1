"""Does SSL training learn useful features on real microscopy? A learning curve on the Jurkat cell cycle.

For each channel strategy (``fixed``, ``bag_of_channels``) this trains the recipe
``configs/train/jurkat_<strategy>.yaml`` on ``../shared/data/jurkat-cellcycle`` (all 3,422 cells, no
labels) for a bounded time on the CPU, and scores embeddings with kNN (k = 20, cosine, DINO-style
weighted votes) in 5-fold stratified cross-validation on the four large classes (G1, S_phase, G2,
Prophase; 3,307 cells), macro F1 averaged over the folds, for:

- the teacher at several points of the run (the learning curve; evaluation time is not counted);
- the same architecture randomly initialised (the teacher at step 0);
- per-channel intensity statistics of the raw pixels (mean, std, 5/25/50/75/95th percentiles per
  channel, z-scored): no learning at all.

The run length is a step count calibrated from the measured speed so that it takes about ``--minutes``
of training (or ``--steps``); ``--minutes`` is also a hard cap. Strategies run one after the other, or in
parallel processes (``--jobs 2``, one thread each). Prints a table and writes ``<out>/ssl_quality.json``
(and ``<out>/<strategy>/result.json`` as each strategy finishes; ``--report-only`` prints those).

    .venv/bin/python benchmarks/ssl_quality.py --minutes 10 --jobs 2
    .venv/bin/python benchmarks/ssl_quality.py --strategies fixed --minutes 2 --points 2 train.batch_size=64
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("G1", "S_phase", "G2", "Prophase")
RESULT_FILE = "result.json"


def _load_images(config: Any) -> Any:
    """The config's dataset with every image decoded once into memory (3,422 x 3 x 40 x 40 floats)."""
    import torch

    from cellssl.data.dataset import CellDataset
    from cellssl.pipeline import build_dataset

    source = build_dataset(config)
    images = torch.stack([source.load_image(i) for i in range(len(source))])

    class InMemory(CellDataset):
        def __init__(self) -> None:
            self.metadata = source.metadata
            self.channel_names = tuple(source.channel_names)
            self.label_columns = tuple(source.label_columns)

        def load_image(self, index: int) -> torch.Tensor:
            return images[index]

    return InMemory(), images


def intensity_features(images: Any) -> np.ndarray:
    """Per-channel mean, std and 5/25/50/75/95th percentiles of the raw pixels, z-scored over the dataset."""
    flat = images.flatten(2).double().numpy()
    feats = [flat.mean(-1), flat.std(-1)] + [np.percentile(flat, q, axis=-1) for q in (5, 25, 50, 75, 95)]
    x = np.concatenate(feats, axis=1)
    return (x - x.mean(0)) / (x.std(0) + 1e-12)


def knn_f1(features: np.ndarray, labels: np.ndarray, k: int = 20, folds: int = 5, seed: int = 0) -> float:
    """Mean macro F1 of cosine kNN (softmax-weighted votes, T = 0.07) over stratified folds."""
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold

    from cellssl.eval.engines.knn import knn_classify

    scores = []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels):
        pred = knn_classify(features[train], labels[train], features[test], [k], metric="cosine",
                            num_classes=len(CLASSES), num_threads=1)[k].labels
        scores.append(f1_score(labels[test], pred, average="macro"))
    return float(np.mean(scores))


def embed(backbone: Any, strategy: Any, images: Any, channel_names: tuple[str, ...], normalizer: Any,
          size: int) -> np.ndarray:
    """Embeddings of ``images`` (N, C, H, W) by ``strategy`` with an eval-mode copy of ``backbone``."""
    import torch
    import torch.nn.functional as F

    model = copy.deepcopy(backbone).eval()
    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for start in range(0, len(images), 256):
            x = images[start : start + 256]
            if tuple(x.shape[-2:]) != (size, size):
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            x = normalizer(x, channel_names)
            out.append(strategy.embed(model, x, channel_names).float())
    return torch.cat(out).numpy()


def _calibrated_steps(objective: Any, dataset: Any, strategy: Any, normalizer: Any, section: Any, run_dir: Path,
                      seed: int, args: argparse.Namespace) -> int:
    """Steps that take about ``args.minutes`` at the speed of a few probe steps (median)."""
    import torch

    from cellssl.train.trainer import Trainer

    probe = copy.deepcopy(section)
    probe.max_steps, probe.checkpoint_every_steps, probe.max_minutes = 6, 10_000, None
    probe_dir = run_dir / "calibration"
    Trainer(objective, [strategy.training_dataset(dataset)], normalizer, probe, probe_dir, torch.device("cpu"),
            seed).fit()
    rates = [json.loads(line)["images_per_s"] for line in (probe_dir / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(probe_dir)
    seconds_per_step = section.batch_size / statistics.median(rates[1:])
    return max(args.points, int(args.minutes * 60 / seconds_per_step))


def run_strategy(strategy_name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train one strategy's recipe and score its learning curve (in this process)."""
    import torch

    from cellssl.atomic import atomic_write_json
    from cellssl.config.compose import load_run_config
    from cellssl.config.schema import NormalizeSection
    from cellssl.config.validate import build_component, validate_block
    from cellssl.data.preprocess import build_run_normalizer
    from cellssl.pipeline import build_backbone, build_strategy, seed_everything
    from cellssl.train.stage import load_train_section
    from cellssl.train.trainer import Trainer

    torch.set_num_threads(args.threads)
    recipe = Path(args.config_dir) / f"jurkat_{strategy_name}.yaml"
    config = load_run_config(recipe, [f"data.root={args.data}", *args.overrides])
    run_dir = Path(args.out) / strategy_name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    seed = int(config.run.get("seed", 0))
    seed_everything(seed)
    dataset, images = _load_images(config)
    labelled = np.flatnonzero(dataset.metadata["phase"].isin(CLASSES).to_numpy())
    labels = dataset.metadata["phase"].iloc[labelled].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    strategy = build_strategy(config)
    channels = tuple(dataset.channel_names)
    normalize = validate_block(config.get("normalize"), NormalizeSection, "normalize")
    normalizer = build_run_normalizer(normalize, dataset, run_dir)
    section = load_train_section(config.get("train"))
    section.progress = False
    embed_size = int(config.embed.img_size)

    def make_objective() -> Any:
        seed_everything(seed)
        return build_component(config.objective, "objective", "objective",
                               backbone_factory=lambda: build_backbone(config, strategy, channels))

    def score(backbone: Any) -> float:
        feats = embed(backbone, strategy, images[labelled], channels, normalizer, embed_size)
        return knn_f1(feats, labels)

    if args.steps:
        section.max_steps = args.steps
    else:  # calibrate the step time on a throwaway copy
        section.max_steps = _calibrated_steps(make_objective(), dataset, strategy, normalizer, section, run_dir,
                                              seed, args)
    section.max_minutes = args.minutes
    section.checkpoint_every_steps = section.max_steps

    objective = make_objective()
    random_f1 = score(objective.teacher_backbone())
    marks = {round(section.max_steps * (i + 1) / args.points) for i in range(args.points)}
    curve: list[dict[str, Any]] = []
    clock = {"train": 0.0, "last": time.monotonic()}
    worst = {"collapse": 0.0}

    def evaluate(trainer: Trainer, record: dict[str, Any]) -> None:
        now = time.monotonic()
        clock["train"] += now - clock["last"]
        worst["collapse"] = max(worst["collapse"], record.get("collapse", 0.0))
        if trainer.step in marks or trainer.step == section.max_steps:
            curve.append({"step": trainer.step, "train_minutes": clock["train"] / 60,
                          "knn_f1": score(trainer.objective.teacher_backbone()), "loss": record["loss"],
                          "entropy_ratio": record.get("teacher_entropy", 0.0) / record.get("teacher_entropy_max", 1),
                          "collapse_seen": worst["collapse"]})
            logging.getLogger("ssl_quality").info("%s %s", strategy_name, curve[-1])
        clock["last"] = time.monotonic()

    trainer = Trainer(objective, [strategy.training_dataset(dataset)], normalizer, section, run_dir,
                      torch.device("cpu"), seed, callbacks=[evaluate])
    result = trainer.fit()
    if not curve or curve[-1]["step"] != result.step:
        last = result.last_record
        curve.append({"step": result.step, "train_minutes": clock["train"] / 60,
                      "knn_f1": score(objective.teacher_backbone()), "loss": last.get("loss", float("nan")),
                      "entropy_ratio": last.get("teacher_entropy", float("nan")) / last.get("teacher_entropy_max", 1),
                      "collapse_seen": worst["collapse"]})
    summary = {"strategy": strategy_name, "recipe": str(recipe), "overrides": list(args.overrides),
               "random_init_f1": random_f1, "intensity_stats_f1": knn_f1(intensity_features(images[labelled]), labels),
               "curve": curve, "planned_steps": section.max_steps, "steps": result.step,
               "stopped_by_time": result.stopped_by_time, "threads": args.threads}
    atomic_write_json(run_dir / RESULT_FILE, summary)  # kept even if the parent process is gone
    return summary


def _worker(payload: tuple[str, argparse.Namespace]) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING)
    return run_strategy(*payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="training time per strategy: the run length (steps calibrated to it) and a hard cap")
    parser.add_argument("--steps", type=int, default=None, help="run length in steps instead (no calibration)")
    parser.add_argument("--points", type=int, default=4, help="learning-curve points (evenly spaced in steps)")
    parser.add_argument("--strategies", nargs="+", default=["fixed", "bag_of_channels"])
    parser.add_argument("--jobs", type=int, default=1, help="strategies trained in parallel processes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: 2 / jobs)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "jurkat-cellcycle"))
    parser.add_argument("--config-dir", default=str(REPO / "configs" / "train"))
    parser.add_argument("--out", default=str(REPO / "runs" / "ssl_quality"))
    parser.add_argument("--report-only", action="store_true",
                        help="print the table of a finished run from <out>/<strategy>/result.json, train nothing")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the recipes, e.g. train.lr=1e-3")
    args = parser.parse_args()
    args.threads = args.threads or max(1, (os.cpu_count() or 2) // args.jobs)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("ssl_quality").setLevel(logging.INFO)
    start = time.monotonic()
    payloads = [(name, args) for name in args.strategies]
    if args.report_only:
        results = [json.loads((Path(args.out) / name / RESULT_FILE).read_text()) for name in args.strategies]
    elif args.jobs > 1:
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            results = pool.map(_worker, payloads)
    else:
        results = [run_strategy(*p) for p in payloads]
    wall = (time.monotonic() - start) / 60

    threads = results[0].get("threads", args.threads) if results else args.threads
    print(f"Jurkat cell cycle (4 classes, 3,307 cells): kNN k=20 cosine, 5-fold stratified, macro F1. "
          f"{platform.machine()}, {os.cpu_count()} CPUs, {threads} thread(s) per strategy; wall {wall:.1f} min")
    print(f"{'strategy':<16} {'point':<10} {'step':>6} {'train min':>9} {'kNN F1':>7} {'vs random':>9} "
          f"{'H/logK':>7} {'collapse':>8}")
    for res in results:
        base = res["random_init_f1"]
        print(f"{res['strategy']:<16} {'stats':<10} {'':>6} {'':>9} {res['intensity_stats_f1']:>7.3f}")
        print(f"{res['strategy']:<16} {'random':<10} {0:>6} {0:>9.1f} {base:>7.3f}")
        for i, point in enumerate(res["curve"]):
            print(f"{res['strategy']:<16} {f'trained {i + 1}':<10} {point['step']:>6} {point['train_minutes']:>9.1f} "
                  f"{point['knn_f1']:>7.3f} {100 * (point['knn_f1'] - base):>+9.1f} {point['entropy_ratio']:>7.3f} "
                  f"{'yes' if point['collapse_seen'] else 'no':>8}")
    if not args.report_only:
        out = Path(args.out) / "ssl_quality.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"args": dict(vars(args)), "wall_minutes": wall, "results": results}, indent=2))
        print(f"results: {out}")


if __name__ == "__main__":
    main()
