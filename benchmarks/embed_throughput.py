"""Embedding throughput: backbone-only forwards vs the whole embed stage, and the inference modes.

One run prints three tables (medians of ``--repeats`` timed runs after one warm-up run each):

Every table interleaves its variants round by round, so load from other processes falls on all of them alike.

1. **End-to-end vs backbone-only** on real Jurkat cells (``../shared/data/jurkat-cellcycle``, 3 channels folded
   into the batch by ``bag_of_channels``, resized to ``--size`` px): the run's :class:`~cellssl.embed.Embedder`
   ``export`` (decode the TIFFs, normalise with dataset statistics, resize, strategy, backbone, Parquet shards and
   manifest: what ``cellssl embed`` runs) against the same forwards on images preprocessed beforehand, and their
   ratio.
2. **Inference modes** on ``--mode-batch`` single-channel images per forward: eager fp32, compiled fp32, bf16
   autocast, bf16 weights cast once, and both bf16 modes compiled (``embed.bf16`` / ``embed.compile``). The
   compile time (first call) is printed beside each compiled mode. On a CPU without native bf16, cast runs its
   matmuls with fp32 units (``cellssl.models.bf16``); a row "bf16 cast (bf16 kernels)" runs the same bf16
   copy on PyTorch's bf16 kernels for comparison.
3. (``--folding``) channels folded into the batch vs one forward per channel.

    python benchmarks/embed_throughput.py                       # ViT-S/8, 64 px, 48 cells, fp32 end to end
    python benchmarks/embed_throughput.py --precision bf16 --bf16 cast --cells 32
    python benchmarks/embed_throughput.py --skip-compile --folding
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import yaml

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "jurkat-cellcycle"


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """``{name: (median wall seconds, median CPU seconds of this process)}`` over ``repeats`` rounds that run every
    function once each (after one warm-up call each), so load from other processes falls on all of them alike."""
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in fns}


def _run(folder: Path, args: argparse.Namespace) -> object:  # a cellssl Run
    from cellssl.config.compose import load_run_config
    from cellssl.pipeline import start_run

    meta = pd.read_csv(args.data / "metadata.csv")
    table = folder / "cells.csv"
    meta.head(args.cells).to_csv(table, index=False)
    config = {
        "run": {"output_dir": str(folder / "run"), "num_threads": args.threads, "device": args.device},
        "data": {"name": "table", "root": str(args.data), "table": str(table), "bit_depth": "uint16",
                 "label_columns": ["phase"]},
        "channels": {"name": "bag_of_channels", "aggregate": "concat"},
        "backbone": {"name": args.arch, "patch_size": args.patch, "img_size": args.size, "layerscale_init": None},
        "embed": {"img_size": args.size, "batch_size": args.batch, "num_workers": args.num_workers,
                  "precision": args.precision, "bf16": args.bf16},
        "normalize": {"mode": "dataset"},
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return start_run(load_run_config(path, []))


def end_to_end(args: argparse.Namespace) -> None:
    """Table 1: ``Embedder.export`` vs the same forwards on preprocessed images."""
    from cellssl.pipeline import run_embedder
    from cellssl.plan.checks import plan_dataset

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run = _run(folder, args)
        dataset = plan_dataset(run.plan)
        embedder = run_embedder(run)  # computes the channel statistics: not timed
        rows = list(range(len(dataset)))
        names = tuple(dataset.channel_names)
        images, _ = embedder.preprocessed(dataset, rows)
        inference = embedder.inference

        def forwards() -> None:
            with torch.no_grad(), inference.context():
                for start in range(0, len(rows), args.batch):
                    embedder.strategy.embed(inference.module, inference.inputs(images[start : start + args.batch]),
                                            names)

        def export() -> None:
            embedder.export(dataset, folder / "embeddings", indices=rows, progress=False)

        times = _interleaved({"backbone only (preprocessed)": forwards, "end to end (Embedder.export)": export},
                             args.repeats)
    n = len(rows)
    print(f"\n1. end to end vs backbone only: {n} Jurkat cells x {len(names)} channels folded, {args.arch}/"
          f"{args.patch} at {args.size} px, {inference.numerics}, batch {args.batch} cells, "
          f"num_workers {args.num_workers}")
    print(f"{'':<32}{'cells/s':>9}{'images/s':>10}{'wall s':>8}{'CPU s':>8}")
    for label, (wall, cpu) in times.items():
        print(f"{label:<32}{n / wall:>9.1f}{n * len(names) / wall:>10.1f}{wall:>8.2f}{cpu:>8.2f}")
    (forward_wall, forward_cpu), (export_wall, export_cpu) = times.values()
    print(f"end to end / backbone only throughput: {forward_wall / export_wall:.0%} (wall clock), "
          f"{forward_cpu / export_cpu:.0%} (CPU time of this process)")


def modes(args: argparse.Namespace) -> None:
    """Table 2: eager / compiled x fp32 / bf16 autocast / bf16 cast on single-channel forwards."""
    from cellssl.embed.fast import compile_unavailable, native_bf16, prepare_for_inference
    from cellssl.models.vit import ViTConfig, build_vit

    device = torch.device(args.device)
    torch.manual_seed(0)
    vit = build_vit(ViTConfig(arch=args.arch, patch_size=args.patch, img_size=args.size, layerscale_init=None),
                    in_chans=1).eval()
    images = torch.rand(args.mode_batch, 1, args.size, args.size)
    variants = [("fp32", "auto", False), ("fp32", "auto", True), ("bf16", "autocast", False),
                ("bf16", "cast", False), ("bf16", "autocast", True), ("bf16", "cast", True)]
    if args.skip_compile:
        variants = [v for v in variants if not v[2]]
    variants.sort(key=lambda v: v[2])  # eager rows first
    reason = compile_unavailable(device) if not args.skip_compile else None
    print(f"\n2. inference modes: {args.arch}/{args.patch} at {args.size} px, {args.mode_batch} single-channel images "
          f"per forward; native bf16 on {device}: {'yes' if native_bf16(device) else 'no'}")
    if reason:
        print(f"torch.compile unavailable ({reason}): compiled rows run eager")
    print(f"{'mode':<42}{'images/s':>10}{'vs fp32':>9}{'vs autocast':>13}{'first call s':>14}")
    fns: dict[str, Callable[[], object]] = {}
    first: dict[str, float] = {}
    rows = [(precision, bf16, compiled, False) for precision, bf16, compiled in variants]
    if not native_bf16(device):  # cast's fp32 matmuls against the same bf16 copy on the bf16 kernels
        rows.insert(next(i for i, r in enumerate(rows) if r[:3] == ("bf16", "cast", False)) + 1,
                    ("bf16", "cast", False, True))
    for precision, bf16, compiled, bf16_kernels in rows:
        inference = prepare_for_inference(vit, precision, bf16, compiled, device)
        if bf16_kernels:
            inference = dataclasses.replace(inference, fp32_matmuls=False)

        def forward(inference=inference) -> None:
            with torch.no_grad(), inference.context():
                inference.module(inference.inputs(images))
            if device.type == "cuda":
                torch.cuda.synchronize()

        label = f"{precision}{'' if precision == 'fp32' else ' ' + bf16}{' compiled' if compiled else ''}"
        label += " (bf16 kernels)" if bf16_kernels else " (fp32 matmuls)" if inference.fp32_matmuls else ""
        start = time.perf_counter()
        forward()  # compiles a compiled variant
        first[label], fns[label] = time.perf_counter() - start, forward
    times = _interleaved(fns, args.repeats)
    speeds = {label: args.mode_batch / wall for label, (wall, _) in times.items()}
    for label, speed in speeds.items():
        autocast = speeds.get("bf16 autocast")
        vs_autocast = f"{speed / autocast:>12.2f}x" if autocast and label.startswith("bf16") else " " * 13
        print(f"{label:<42}{speed:>10.2f}{speed / speeds['fp32']:>8.2f}x{vs_autocast}{first[label]:>14.1f}")


def folding(args: argparse.Namespace) -> None:
    """Table 3: ``bag_of_channels`` (one forward of B*C images) vs a forward per channel."""
    from cellssl.channels.bag import BagOfChannels, BagOfChannelsConfig
    from cellssl.channels.per_channel import PerChannelConcat, PerChannelConcatConfig
    from cellssl.models.vit import ViTConfig, build_vit

    vit = build_vit(ViTConfig(arch=args.arch, patch_size=args.patch, img_size=args.size, layerscale_init=None),
                    in_chans=1).eval()
    images = torch.rand(args.batch, 3, args.size, args.size)
    names = ["c0", "c1", "c2"]
    folded = BagOfChannels(BagOfChannelsConfig(aggregate="concat"))
    looped = PerChannelConcat(PerChannelConcatConfig(fold=False))
    with torch.no_grad():
        torch.testing.assert_close(folded.embed(vit, images, names), looped.embed(vit, images, names),
                                   rtol=1e-4, atol=1e-4)

        times = _interleaved({"folded": lambda: folded.embed(vit, images, names),
                              "looped": lambda: looped.embed(vit, images, names)}, args.repeats)
    t_fold, t_loop = times["folded"][0], times["looped"][0]
    print(f"\n3. folded vs one channel at a time (fp32, batch {args.batch} x 3 channels): "
          f"{args.batch / t_fold:.1f} vs {args.batch / t_loop:.1f} cells/s ({t_loop / t_fold:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the Jurkat folder (metadata.csv + images)")
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--cells", type=int, default=48, help="Jurkat cells embedded end to end")
    parser.add_argument("--batch", type=int, default=16, help="cells per forward end to end (x3 channels folded)")
    parser.add_argument("--mode-batch", type=int, default=4, help="single-channel images per forward in table 2")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="end to end precision")
    parser.add_argument("--bf16", default="auto", choices=("auto", "cast", "autocast"), help="end to end bf16 mode")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-compile", action="store_true", help="no torch.compile rows in table 2")
    parser.add_argument("--skip-end-to-end", action="store_true", help="no table 1")
    parser.add_argument("--skip-modes", action="store_true", help="no table 2")
    parser.add_argument("--folding", action="store_true", help="also print table 3")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device {args.device}, {args.threads} threads, torch {torch.__version__}, "
          f"load average {load:.1f} at start, median of {args.repeats}")
    if not args.skip_end_to_end:
        end_to_end(args)
    if not args.skip_modes:
        modes(args)
    if args.folding:
        folding(args)


if __name__ == "__main__":
    main()
