"""Training-step throughput: images/s of one full DINOv2 step (teacher forward, student forward and backward
on all crops, AdamW, teacher EMA) through cellssl's :class:`~cellssl.train.trainer.Trainer`.

Settings: ViT-S/16 with 224 px global crops (96 px local crops) and ViT-S/8 with 64 px global crops
(32 px local crops), each in fp32 and bf16 autocast, on the CPU and, when one is available, on CUDA.
Small batches underestimate throughput: per-step costs that do not depend on the batch (AdamW and the
EMA over ~40 M parameters, the 65,536-prototype weight norm) then weigh more.
Batches are pre-built (augmentation and data loading are not timed). Each setting runs ``--warmup``
steps, then ``--steps`` timed steps; the median step time gives images/s (source images, not crops).

    .venv/bin/python benchmarks/train_throughput.py                      # CPU (and CUDA if present)
    .venv/bin/python benchmarks/train_throughput.py --devices cuda --batch-size 64 --steps 10
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

SETTINGS = {  # name -> (patch size, global crop, local crop, default CPU batch size)
    "vit_small/16 @224": (16, 224, 96, 16),
    "vit_small/8 @64": (8, 64, 32, 64),
}
CUDA_BATCH = 64


def _trainer(patch: int, global_size: int, local_size: int, args: argparse.Namespace, device: torch.device,
             precision: str, run_dir: Path) -> Any:
    from cellssl.data.normalize import IdentityNormalizer
    from cellssl.data.synthetic import SyntheticCellsConfig, build_synthetic_cells
    from cellssl.models.vit import ViTConfig, build_vit
    from cellssl.objectives.dino import HeadConfig
    from cellssl.objectives.dinov2 import DINOv2Config, DINOv2Objective
    from cellssl.train.config import TrainSection
    from cellssl.train.trainer import Trainer

    vit = ViTConfig(arch="vit_small", patch_size=patch, img_size=global_size, drop_path_rate=0.1)
    config = DINOv2Config(head=HeadConfig(out_dim=args.prototypes))
    config.multicrop.global_size, config.multicrop.local_size = global_size, local_size
    config.multicrop.n_local = args.n_local
    objective = DINOv2Objective(config, lambda: build_vit(vit, args.channels))
    data = build_synthetic_cells(SyntheticCellsConfig(num_samples=args.batch_size, image_size=global_size,
                                                      num_channels=args.channels))
    section = TrainSection(batch_size=args.batch_size, precision=precision, progress=False, epochs=1000)
    return Trainer(objective, [data], IdentityNormalizer(), section, run_dir, device, seed=0)


def _batch(trainer: Any) -> dict[str, Any]:
    keys = trainer.plan.batches(0)[0]
    return trainer.collate([trainer.views[key] for key in keys])


def measure(name: str, device: torch.device, precision: str, args: argparse.Namespace) -> float:
    """Median images/s of ``args.steps`` training steps."""
    patch, global_size, local_size, _ = SETTINGS[name]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(patch, global_size, local_size, args, device, precision, Path(tmp))
        trainer.objective.train()
        batch = _batch(trainer)
        times = []
        for i in range(args.warmup + args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            trainer.train_step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    return args.batch_size / statistics.median(times)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=None,
                        help="cpu and/or cuda (default: cpu, plus cuda when available)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per step (default: 16 at 224 px and 64 at 64 px on CPU, 64 on CUDA)")
    parser.add_argument("--n-local", type=int, default=8, help="local crops per image (DINO: 8)")
    parser.add_argument("--prototypes", type=int, default=65536, help="DINO head prototypes (DINOv2: 65536)")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"DINOv2 train step (2 global + {args.n_local} local crops, {args.prototypes} prototypes, iBOT, KoLeo), "
          f"{args.channels} channels; median of {args.steps} steps after {args.warmup} warm-up; torch "
          f"{torch.__version__}; {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads")
    print(f"{'device':<6} {'setting':<20} {'precision':<9} {'batch':>5} {'images/s':>9}")
    batch_default = args.batch_size
    for device_name in devices:
        device = torch.device(device_name)
        label = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
        for name in args.settings:
            args.batch_size = batch_default or (CUDA_BATCH if device.type == "cuda" else SETTINGS[name][3])
            for precision in args.precisions:
                rate = measure(name, device, precision, args)
                print(f"{device_name:<6} {name:<20} {precision:<9} {args.batch_size:>5} {rate:>9.1f}", flush=True)
        print(f"({device_name}: {label})")


if __name__ == "__main__":
    main()
