"""Linear-probe speed: ``fit_linear_probe`` on N x D float32 features, the default grid of heads trained at once.

Synthetic features (Gaussian classes in a random low-rank subspace plus noise, an offset as raw features
have), ``--classes`` balanced classes. Each run carves a stratified 20 % validation split, trains the whole
grid (learning rates x weight decays) together, picks the head on the validation rows and refits it on all
training rows; the time covers all of it. Prints the median (and every run) over ``--repeats`` runs, the
chosen head and the accuracy on held-out rows. No asserts: this is a measurement, not a test.

    .venv/bin/python benchmarks/linear_probe_speed.py                          # 100k x 1536, 10 classes, CPU
    .venv/bin/python benchmarks/linear_probe_speed.py --n 10000 --dim 1024     # the "10k x 1k in seconds" case
    .venv/bin/python benchmarks/linear_probe_speed.py --precision bf16           # bfloat16 matrix products
    .venv/bin/python benchmarks/linear_probe_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np


def _features(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rank = min(64, dim)
    basis = rng.normal(size=(rank, dim)).astype(np.float32) / np.sqrt(rank)
    centres = rng.normal(size=(classes, rank)).astype(np.float32) * 0.6
    y = rng.integers(0, classes, n)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 20_000):  # bounded temporary memory
        stop = min(n, start + 20_000)
        latent = centres[y[start:stop]] + rng.normal(size=(stop - start, rank)).astype(np.float32)
        x[start:stop] = latent @ basis + 0.5 * rng.normal(size=(stop - start, dim)).astype(np.float32) + 1.0
    return x, y.astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="training rows")
    parser.add_argument("--n-test", type=int, default=10_000, help="held-out rows scored after the fit")
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="bf16 matrix products while training (AMX / AVX512-BF16 CPUs, GPUs)")
    parser.add_argument("--no-refit", action="store_true", help="keep the chosen head instead of refitting it")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from cellssl.eval.engines.linear_probe import DEFAULT_LEARNING_RATES, DEFAULT_WEIGHT_DECAYS, fit_linear_probe

    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = _features(args.n + args.n_test, args.dim, args.classes, args.seed)
    train_x, train_y, test_x, test_y = x[: args.n], y[: args.n], x[args.n :], y[args.n :]
    heads = len(DEFAULT_LEARNING_RATES) * len(DEFAULT_WEIGHT_DECAYS)
    print(f"linear probe: {args.n} x {args.dim} float32 train features, {args.classes} classes, "
          f"grid {len(DEFAULT_LEARNING_RATES)} lr x {len(DEFAULT_WEIGHT_DECAYS)} wd = {heads} heads trained at once, "
          f"{args.epochs} epochs, batch {args.batch_size}, refit {'off' if args.no_refit else 'on'}, "
          f"device {args.device}, precision {args.precision}, median of {args.repeats} runs")
    print(f"python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
          f"{platform.processor() or platform.machine()}")
    times = []
    probe = None
    for _ in range(args.repeats):
        start = time.perf_counter()
        probe = fit_linear_probe(train_x, train_y, multilabel=False, epochs=args.epochs, batch_size=args.batch_size,
                                 device=args.device, refit=not args.no_refit, seed=args.seed,
                                 precision=args.precision)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    assert probe is not None
    accuracy = float((probe.predict(test_x) == test_y).mean())
    print(f"fit time: median {statistics.median(times):.2f} s, min {min(times):.2f} s, runs "
          f"{[round(t, 2) for t in times]}")
    print(f"chosen head: lr {probe.chosen.lr:g}, weight decay {probe.chosen.weight_decay:g}, validation "
          f"{probe.selection_metric} {probe.chosen.val_score:.4f}; sizes {probe.sizes}")
    print(f"held-out accuracy: {accuracy:.4f} on {args.n_test} rows")


if __name__ == "__main__":
    main()
