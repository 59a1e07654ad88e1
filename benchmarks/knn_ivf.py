"""faiss kNN: exact (flat) vs IVF search, time, memory and recall@k (cellssl.eval.engines.knn_index).

Data: ``--train`` x ``--dim`` training rows and ``--queries`` test rows drawn from a mixture of ``--clusters``
Gaussian clusters (embeddings of cells are clustered; on structureless Gaussian noise any IVF index has poor
recall), L2-normalised (cosine). For each index: build time (IVF: k-means training on ``--train-size`` rows,
then adding), search time of all queries, the index's memory (faiss serialised size) and recall@k of the IVF
results against the exact ones. Runs on faiss GPUs with ``--device cuda`` (needs faiss-gpu).

The issue's target size, 1M x 100k x 384-d, needs an exact search of 100k x 1M (~8e13 flops): 10-30 minutes
on a 2-core CPU. Search time scales linearly with the number of queries, so ``--queries`` can be lowered and
the figure extrapolated (printed as ``per 100k q``).

    .venv/bin/python benchmarks/knn_ivf.py --train 1000000 --queries 2000 --dim 384
    .venv/bin/python benchmarks/knn_ivf.py --train 1000000 --queries 100000 --dim 384 --device cuda
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def make_data(n: int, dim: int, clusters: int, seed: int, draw: int, noise: float) -> np.ndarray:
    """``n`` L2-normalised float32 rows from a mixture of Gaussian clusters (centres from ``seed``, rows from
    ``draw``), generated in chunks."""
    centres = np.random.default_rng(seed).normal(size=(clusters, dim)).astype(np.float32)
    rng = np.random.default_rng([seed, draw])
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 200_000):
        stop = min(n, start + 200_000)
        labels = rng.integers(0, clusters, size=stop - start)
        block = centres[labels] + noise * rng.standard_normal(size=(stop - start, dim), dtype=np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def index_bytes(built: object) -> int:
    import faiss

    index = built.index  # type: ignore[attr-defined]
    if hasattr(faiss, "index_gpu_to_cpu") and type(index).__name__.startswith("Gpu"):
        index = faiss.index_gpu_to_cpu(index)
    return int(faiss.serialize_index(index).size)


def main() -> None:
    from cellssl.eval.engines.knn import faiss_threads
    from cellssl.eval.engines.knn_index import KNNIndexConfig, build_index, recall_at_k, search

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=1.0, help="within-cluster std / centre std")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 10, 20])
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--train-size", type=int, default=100_000, help="rows for the IVF k-means")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    k = max(args.k)

    start = time.perf_counter()
    train = make_data(args.train, args.dim, args.clusters, args.seed, 0, args.noise)
    queries = make_data(args.queries, args.dim, args.clusters, args.seed, 1, args.noise)  # same clusters, new rows
    print(f"data: {args.train} x {args.dim} train, {args.queries} queries, {args.clusters} clusters, "
          f"{train.nbytes / 2**30:.2f} GiB of training rows ({time.perf_counter() - start:.1f} s to generate)")
    with faiss_threads(args.threads) as threads:
        print(f"faiss on {args.device}, {threads} threads; k = {args.k}")
        configs = [("exact", KNNIndexConfig(kind="exact", device=args.device))]
        configs += [(f"ivf{args.nlist},nprobe={p}", KNNIndexConfig(kind="ivf", nlist=args.nlist, nprobe=p,
                                                                     train_size=args.train_size,
                                                                     device=args.device)) for p in args.nprobe]
        exact_ids = None
        header = f"{'index':<22} {'build s':>8} {'search s':>9} {'per 100k q':>11} {'index MiB':>10}"
        print(header + "".join(f" {'R@' + str(kk):>7}" for kk in args.k))
        for name, config in configs:
            t0 = time.perf_counter()
            built = build_index(train, "cosine", config, k)
            build_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            _, ids = search(built, queries, k)
            search_s = time.perf_counter() - t0
            if exact_ids is None:
                exact_ids = ids
            recalls = "".join(f" {recall_at_k(ids, exact_ids, kk):>7.3f}" for kk in args.k)
            print(f"{name:<22} {build_s:>8.1f} {search_s:>9.2f} {search_s * 100_000 / args.queries:>11.1f} "
                  f"{index_bytes(built) / 2**20:>10.0f}{recalls}")
            del built


if __name__ == "__main__":
    main()
