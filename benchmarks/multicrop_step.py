"""Multi-crop training step: one packed student pass over global + local crops vs the per-crop-size loop.

One full DINOv2 step through :class:`~cellssl.train.trainer.Trainer` (teacher forward on the global crops,
student forward and backward on all crops, AdamW, EMA) with ``backbone.crop_packing`` = ``off`` (the
straightforward implementation: the ViT runs once per crop size) and ``auto`` (one pass over packed
sequences: ``grouped`` attention on CPU, xformers block-diagonal attention on CUDA). Each setting runs in a
fresh subprocess so its peak memory is its own: CPU peak RSS above the RSS before the first step, or CUDA
``max_memory_allocated``. Batches are pre-built (no data loading); figures are medians of ``--steps`` steps
after ``--warmup``.

Defaults are sized for a 2-core CPU (say so when quoting them): ViT-S/16 with 2 x 224 px global + 8 x 96 px
local crops at batch 4; ViT-L/16 at batch 2 with 2 x 96 px global + 8 x 48 px local crops; DINO head with
4096 prototypes. On a GPU pass e.g. ``--batch-small 64 --batch-large 32 --large-global 224 --large-local 96``.

    .venv/bin/python benchmarks/multicrop_step.py
    .venv/bin/python benchmarks/multicrop_step.py --models vit_small --steps 5 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _trainer(args: argparse.Namespace, device: torch.device, run_dir: Path) -> Any:
    from cellssl.data.normalize import IdentityNormalizer
    from cellssl.data.synthetic import SyntheticCellsConfig, build_synthetic_cells
    from cellssl.models.vit import ViTConfig, build_vit
    from cellssl.objectives.dino import HeadConfig
    from cellssl.objectives.dinov2 import DINOv2Config, DINOv2Objective
    from cellssl.train.config import TrainSection
    from cellssl.train.trainer import Trainer

    vit = ViTConfig(arch=args.model, patch_size=16, img_size=args.global_size, drop_path_rate=0.0,
                    crop_packing=args.packing)
    config = DINOv2Config(head=HeadConfig(out_dim=args.prototypes))
    config.multicrop.global_size, config.multicrop.local_size = args.global_size, args.local_size
    config.multicrop.n_local = args.n_local
    objective = DINOv2Objective(config, lambda: build_vit(vit, args.channels))
    data = build_synthetic_cells(SyntheticCellsConfig(num_samples=args.batch_size, image_size=args.global_size,
                                                      num_channels=args.channels))
    section = TrainSection(batch_size=args.batch_size, precision=args.precision, progress=False, epochs=1000)
    return Trainer(objective, [data], IdentityNormalizer(), section, run_dir, device, seed=0)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One setting, in this process: median step time and peak memory."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)  # the same initial weights in both settings' processes
        trainer = _trainer(args, device, Path(tmp))
        trainer.objective.train()
        keys = trainer.plan.batches(0)[0]
        batch = trainer.collate([trainer.views[key] for key in keys])
        before = _rss_mb()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for i in range(args.warmup + args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            record = trainer.train_step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i == 0:
                first_loss = record["loss"]  # from the same initial weights in both settings
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        step = statistics.median(times)
        out = {"step_s": step, "images_per_s": args.batch_size / step, "loss": first_loss,
               "cpu_rss_before_mb": before, "cpu_peak_rss_mb": peak_rss, "cpu_step_mb": peak_rss - before}
        if device.type == "cuda":
            out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_small", "vit_large"], choices=["vit_small", "vit_large"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--batch-small", type=int, default=4, help="batch of ViT-S/16")
    parser.add_argument("--small-global", type=int, default=224)
    parser.add_argument("--small-local", type=int, default=96)
    parser.add_argument("--batch-large", type=int, default=2, help="batch of ViT-L/16")
    parser.add_argument("--large-global", type=int, default=96)
    parser.add_argument("--large-local", type=int, default=48)
    parser.add_argument("--n-local", type=int, default=8)
    parser.add_argument("--prototypes", type=int, default=4096)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        for key, value in json.loads(args.child).items():
            setattr(args, key, value)
        print("RESULT " + json.dumps(child(args)))
        return
    print(f"device {args.device}, {args.precision}, {args.threads} threads, torch {torch.__version__}; "
          f"{args.n_local} local crops, {args.prototypes} prototypes; median of {args.steps} steps")
    header = f"{'model':<10} {'batch':>5} {'crops':>9} {'packing':>8} {'step s':>8} {'img/s':>7} {'peak MB':>9}"
    print(header)
    for model in args.models:
        small = model == "vit_small"
        setting = {"model": model, "batch_size": args.batch_small if small else args.batch_large,
                   "global_size": args.small_global if small else args.large_global,
                   "local_size": args.small_local if small else args.large_local}
        results = {}
        for packing in ("off", "auto"):
            spec = json.dumps({**setting, "packing": packing})
            proc = subprocess.run([sys.executable, __file__, "--child", spec, *sys.argv[1:]], capture_output=True,
                                  text=True, check=False)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                print(f"{model} {packing}: failed\n{proc.stderr[-2000:]}")
                continue
            r = results[packing] = json.loads(line[0][7:])
            peak = r.get("cuda_peak_mb", r["cpu_step_mb"])
            crops = f"{setting['global_size']}/{setting['local_size']}"
            print(f"{model:<10} {setting['batch_size']:>5} {crops:>9} {packing:>8} {r['step_s']:>8.3f} "
                  f"{r['images_per_s']:>7.2f} {peak:>9.0f}")
        if len(results) == 2:
            print(f"  packed / loop: speed x{results['off']['step_s'] / results['auto']['step_s']:.2f}, "
                  f"first-step loss difference {abs(results['off']['loss'] - results['auto']['loss']):.2e}")


if __name__ == "__main__":
    main()
