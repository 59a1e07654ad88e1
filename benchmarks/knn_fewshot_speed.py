"""kNN few-shot sweep speed: the ``knn`` evaluator with ``few_shot`` on a synthetic embedding table.

Synthetic embeddings: ``--classes`` Gaussian classes in ``--dim`` dimensions; a column split puts ``--n-train``
rows in the kNN memory (the few-shot pool) and ``--n-test`` rows in the test side. The evaluator is timed
twice per repeat: with the few-shot sweep (``--shots`` per class x ``--draws`` draws, every k of ``--ks``)
and without it (the full-memory k sweep only); the difference is the cost of the few-shot sweep. Prints
medians over ``--repeats`` runs and the few-shot macro F1 (mean +/- std over draws). No asserts.

    .venv/bin/python benchmarks/knn_fewshot_speed.py               # 50k pool x 10k test x 384-d, 10 classes
    .venv/bin/python benchmarks/knn_fewshot_speed.py --n-train 10000 --n-test 2000 --repeats 2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50, 100])
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="faiss threads (default: the CPUs available)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import faiss
    import pandas as pd

    from cellssl.embed.store import EmbeddingTable
    from cellssl.eval.base import EvalContext
    from cellssl.eval.engines.knn import available_cpus
    from cellssl.eval.knn import KNNEvaluatorConfig, build_knn_evaluator

    rng = np.random.default_rng(args.seed)
    n = args.n_train + args.n_test
    centres = rng.normal(size=(args.classes, args.dim)).astype(np.float32) * 0.3
    y = rng.integers(0, args.classes, n)
    x = centres[y] + rng.normal(size=(n, args.dim)).astype(np.float32)
    meta = pd.DataFrame({"label": y, "part": np.where(np.arange(n) < args.n_train, "train", "test")})
    table = EmbeddingTable(meta, x)
    split = {"mode": "column", "column": "part", "train_values": ["train"], "test_values": ["test"]}
    common = {"label_column": "label", "ks": args.ks, "split": split, "num_threads": args.threads,
              "per_class_report": False}
    with_few = build_knn_evaluator(KNNEvaluatorConfig(
        **common, few_shot={"shots": args.shots, "draws": args.draws, "seed": args.seed}))
    without = build_knn_evaluator(KNNEvaluatorConfig(**common))
    context = EvalContext(Path("."))
    searches = len(args.shots) * args.draws
    print(f"kNN few-shot sweep: pool {args.n_train} x test {args.n_test} x {args.dim}-d float32, {args.classes} "
          f"classes, shots {args.shots} x {args.draws} draws = {searches} searches, ks {args.ks}, "
          f"median of {args.repeats} runs")
    print(f"python {platform.python_version()}, faiss {faiss.__version__}, "
          f"{args.threads or min(faiss.omp_get_max_threads(), available_cpus())} faiss threads, "
          f"{platform.processor() or platform.machine()}, {available_cpus()} CPUs available")
    full_times, sweep_times = [], []
    result = None
    for _ in range(args.repeats):
        start = time.perf_counter()
        without.evaluate(table, context)
        middle = time.perf_counter()
        result = with_few.evaluate(table, context)
        end = time.perf_counter()
        full_times.append(middle - start)
        sweep_times.append((end - middle) - (middle - start))
    assert result is not None
    full, sweep = statistics.median(full_times), statistics.median(sweep_times)
    print(f"full-memory k sweep (evaluator without few-shot): median {full:.2f} s, runs "
          f"{[round(t, 2) for t in full_times]}")
    print(f"few-shot sweep (difference): median {sweep:.2f} s ({1000 * sweep / searches:.1f} ms per draw), runs "
          f"{[round(t, 2) for t in sweep_times]}")
    k = min(args.ks)
    for shots in args.shots:
        mean = result["metrics"].get(f"fewshot{shots}_k{k}_macro_f1_mean")
        std = result["metrics"].get(f"fewshot{shots}_k{k}_macro_f1_std")
        if mean is not None:
            print(f"  {shots:>4}-shot k={k}: macro F1 {mean:.4f} +/- {std:.4f}")
    print(f"  all {args.n_train} rows k={k}: macro F1 {result['metrics'][f'k{k}_macro_f1']:.4f}")


if __name__ == "__main__":
    main()
