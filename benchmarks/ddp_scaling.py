"""CPU data-parallel scaling: training steps with 1 and 2 processes (torchrun, gloo, DDP).

Each configuration runs the same DINO training step through :class:`~cellssl.train.trainer.Trainer` under
``python -m torch.distributed.run --nproc_per_node=P`` (one thread per process unless ``--threads``), on
pre-built batches (no data loading), and reports the median step time and global images/s:

- weak scaling: every process gets ``--local-batch`` images, so P processes train a P times larger batch;
- strong scaling: the global batch ``--local-batch * max(P)`` is split over the processes;
- for reference, one process with P threads on the global batch (what the processes compete with).

The defaults (a small ViT, patch 8, 32 px crops as in the quickstart) finish in about a minute on 2 cores.
On a machine shared with other work the figures are noisy: quote them with the machine's load.

    .venv/bin/python benchmarks/ddp_scaling.py
    .venv/bin/python benchmarks/ddp_scaling.py --procs 1 2 4 --local-batch 64 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker(args: argparse.Namespace) -> None:
    """Runs in every torchrun process: train ``warmup + steps`` steps, rank 0 prints the timings."""
    from cellssl.data.normalize import IdentityNormalizer
    from cellssl.data.synthetic import SyntheticCellsConfig, build_synthetic_cells
    from cellssl.models.vit import ViTConfig, build_vit
    from cellssl.objectives.dino import DINOConfig, DINOObjective, HeadConfig
    from cellssl.train.config import TrainSection
    from cellssl.train.distributed import init_distributed, shutdown_distributed
    from cellssl.train.trainer import Trainer

    torch.set_num_threads(args.threads)
    env = init_distributed(torch.device("cpu"))
    torch.manual_seed(0)
    vit = ViTConfig(arch="vit_tiny", patch_size=8, img_size=32, embed_dim=args.dim, depth=args.depth,
                    num_heads=4, layerscale_init=None)
    config = DINOConfig(head=HeadConfig(out_dim=128, hidden_dim=512, bottleneck_dim=128, use_bn=True),
                        centering="sinkhorn_knopp")
    config.multicrop.global_size, config.multicrop.local_size, config.multicrop.n_local = 32, 16, 4
    objective = DINOObjective(config, lambda: build_vit(vit, 3))
    global_batch = args.global_batch
    data = build_synthetic_cells(SyntheticCellsConfig(num_samples=global_batch, image_size=32))
    section = TrainSection(batch_size=global_batch, precision=args.precision, progress=False, epochs=1000,
                           lr_scaling="none")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(objective, [data], IdentityNormalizer(), section, tmp, torch.device("cpu"), seed=0)
        trainer.objective.train()
        batch = trainer.collate([trainer.views[key] for key in trainer.plan.batches(0)[0]])
        times = []
        for i in range(args.warmup + args.steps):
            start = time.perf_counter()
            trainer.train_step(batch)
            trainer.parallel.barrier()
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    if env.is_main:
        step = statistics.median(times)
        print("RESULT " + json.dumps({"step_s": step, "images_per_s": global_batch / step}))
    shutdown_distributed()


def run(procs: int, threads: int, global_batch: int, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
               "--master_addr=127.0.0.1", f"--master_port={_port()}", __file__, "--worker",
               "--threads", str(threads), "--global-batch", str(global_batch), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--dim", str(args.dim), "--depth", str(args.depth),
               "--precision", args.precision]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False, cwd=Path(__file__).parent)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        raise RuntimeError(f"{procs} process(es) failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[0][7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--local-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--global-batch", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"CPU DDP (gloo), ViT dim {args.dim} depth {args.depth} patch 8, 2 x 32 px + 4 x 16 px crops, "
          f"{args.precision}, {args.threads} thread(s) per process, {os.cpu_count()} CPUs, median of "
          f"{args.steps} steps")
    largest = max(args.procs)
    base: dict[str, float] = {}
    print(f"{'scaling':<8} {'procs':>5} {'global batch':>12} {'step s':>8} {'img/s':>8} {'speed-up':>8}")
    for kind in ("weak", "strong"):
        for procs in args.procs:
            batch = args.local_batch * (procs if kind == "weak" else largest)
            r = run(procs, args.threads, batch, args)
            base.setdefault(kind, r["images_per_s"])
            print(f"{kind:<8} {procs:>5} {batch:>12} {r['step_s']:>8.3f} {r['images_per_s']:>8.1f} "
                  f"{r['images_per_s'] / base[kind]:>8.2f}")
    r = run(1, args.threads * largest, args.local_batch * largest, args)
    print(f"{'threads':<8} {1:>5} {args.local_batch * largest:>12} {r['step_s']:>8.3f} {r['images_per_s']:>8.1f} "
          f"{r['images_per_s'] / base['strong']:>8.2f}   (one process, {args.threads * largest} threads)")


if __name__ == "__main__":
    main()
