"""Exact cosine kNN search: faiss (cellssl's ``knn_search``) vs scikit-learn brute force vs plain numpy.

Prints the median wall time of each over ``--repeats`` runs, the ratio sklearn / faiss, the thread
counts each library used, and how often the three agree on the top-k neighbour sets. No asserts: this is a
measurement, not a test.

    .venv/bin/python benchmarks/knn_speed.py                       # 100k train x 10k test x 384-d, k=20
    .venv/bin/python benchmarks/knn_speed.py --n-train 20000 --n-test 2000 --repeats 2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _interleaved(
    methods: dict[str, Callable[[], np.ndarray]], repeats: int
) -> dict[str, tuple[list[float], np.ndarray]]:
    """Time every method ``repeats`` times, rotating their order each round.

    Rotating spreads the noise of a shared machine over all methods instead of one.
    """
    names = list(methods)
    times: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, np.ndarray] = {}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            results[name] = methods[name]()
            times[name].append(time.perf_counter() - start)
    return {name: (times[name], results[name]) for name in names}


def _numpy_cosine_topk(train: np.ndarray, test: np.ndarray, k: int, batch: int = 2048) -> np.ndarray:
    train_n = train / np.linalg.norm(train, axis=1, keepdims=True)
    out = np.empty((len(test), k), dtype=np.int64)
    for start in range(0, len(test), batch):
        block = test[start : start + batch]
        sims = (block / np.linalg.norm(block, axis=1, keepdims=True)) @ train_n.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out[start : start + batch] = np.take_along_axis(top, order, axis=1)
    return out


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean fraction of shared neighbours between two (n, k) index arrays."""
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b, strict=True)]))


def _thread_report() -> list[str]:
    import faiss
    from threadpoolctl import threadpool_info

    lines = [f"faiss {faiss.__version__}: omp_get_max_threads() = {faiss.omp_get_max_threads()}"]
    for pool in threadpool_info():
        owner = Path(pool["filepath"]).parent.name  # e.g. numpy.libs, scipy.libs, faiss_cpu.libs
        lines.append(f"{pool['user_api']}/{pool['internal_api']} ({pool['prefix']} in {owner}): "
                     f"num_threads = {pool['num_threads']}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=100_000)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for every library (default: the CPUs this process may use)")
    parser.add_argument("--skip-numpy", action="store_true", help="do not time the plain numpy baseline")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import sklearn
    from sklearn.neighbors import NearestNeighbors
    from threadpoolctl import threadpool_limits

    from cellssl.eval.engines.knn import available_cpus, faiss_threads, knn_search

    threads = args.threads or available_cpus()
    rng = np.random.default_rng(args.seed)
    centres = rng.normal(size=(100, args.dim)).astype(np.float32)
    train = centres[rng.integers(0, 100, args.n_train)] + rng.normal(size=(args.n_train, args.dim)).astype(np.float32)
    test = centres[rng.integers(0, 100, args.n_test)] + rng.normal(size=(args.n_test, args.dim)).astype(np.float32)

    print(f"exact cosine kNN: {args.n_train} train x {args.n_test} test x {args.dim}-d float32, k={args.k}, "
          f"median of {args.repeats} interleaved runs, {threads} threads")
    print(f"python {platform.python_version()}, numpy {np.__version__}, scikit-learn {sklearn.__version__}, "
          f"{platform.processor() or platform.machine()}, {available_cpus()} CPUs available")

    with faiss_threads(threads), threadpool_limits(limits=threads):
        print("threads in use:")
        for line in _thread_report():
            print(f"  {line}")

        def run_faiss() -> np.ndarray:
            return knn_search(train, test, args.k, metric="cosine")[1]

        def run_sklearn() -> np.ndarray:
            model = NearestNeighbors(n_neighbors=args.k, metric="cosine", algorithm="brute").fit(train)
            return model.kneighbors(test, return_distance=False)

        methods = {"faiss": run_faiss, "sklearn": run_sklearn}
        if not args.skip_numpy:
            methods["numpy"] = lambda: _numpy_cosine_topk(train, test, args.k)
        timings = _interleaved(methods, args.repeats)

    labels = {"faiss": "faiss IndexFlatIP (cellssl knn_search)", "sklearn": "scikit-learn NearestNeighbors brute",
              "numpy": "numpy matmul + argpartition"}
    median = {name: statistics.median(runs) for name, (runs, _) in timings.items()}
    for name, (runs, _) in timings.items():
        print(f"{labels[name]:40s} median {median[name]:7.2f} s  min {min(runs):7.2f} s  "
              f"runs {[round(t, 2) for t in runs]}")
    print(f"sklearn / faiss time ratio (median): {median['sklearn'] / median['faiss']:.2f}x "
          f"(min: {min(timings['sklearn'][0]) / min(timings['faiss'][0]):.2f}x)")
    if "numpy" in timings:
        print(f"numpy / faiss time ratio (median):   {median['numpy'] / median['faiss']:.2f}x")
    reference = timings["faiss"][1]
    for name in ("sklearn", "numpy"):
        if name in timings:
            print(f"top-{args.k} neighbour agreement faiss vs {name}: {_agreement(reference, timings[name][1]):.4f}")

if __name__ == "__main__":
    main()
