"""Embedding throughput: channels folded into the batch vs one channel at a time.

Measures images/s of the inference step of the single-channel strategies: ``bag_of_channels`` folds
the C channels into the batch (one forward of B*C single-channel images) while the per-channel loop
(``per_channel_concat`` with ``fold: false``) runs C forwards of B images. Both produce the same
embeddings; the script checks that before timing. Prints the median of several runs and the ratio.

    python benchmarks/embed_throughput.py                         # ViT-S/8, 64 px, 5 channels
    python benchmarks/embed_throughput.py --arch vit_small --patch 16 --size 224 --batch 16
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from cellssl.channels.bag import BagOfChannels, BagOfChannelsConfig
from cellssl.channels.per_channel import PerChannelConcat, PerChannelConcatConfig
from cellssl.models.vit import ViTConfig, build_vit


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build_vit(ViTConfig(arch=args.arch, patch_size=args.patch, img_size=args.size, layerscale_init=None),
                      in_chans=1).to(device).eval()
    images = torch.rand(args.batch, args.channels, args.size, args.size, device=device)
    names = [f"c{i}" for i in range(args.channels)]
    folded = BagOfChannels(BagOfChannelsConfig(aggregate="concat"))
    looped = PerChannelConcat(PerChannelConcatConfig(fold=False))
    with torch.no_grad():
        torch.testing.assert_close(folded.embed(model, images, names), looped.embed(model, images, names),
                                   rtol=1e-4, atol=1e-4)
    print(f"{args.arch}/{args.patch}, {args.size} px, {args.channels} channels, batch {args.batch}, "
          f"device {device}, {args.threads} threads, median of {args.repeats}")
    print(f"{'precision':<10}{'folded img/s':>14}{'one-by-one img/s':>18}{'ratio':>8}")
    for precision in ("fp32", "bf16"):
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                    else contextlib.nullcontext())

        def run(strategy, autocast=autocast):
            with torch.no_grad(), autocast:
                strategy.embed(model, images, names)
            if device.type == "cuda":
                torch.cuda.synchronize()

        t_fold = _time(lambda: run(folded), args.repeats)
        t_loop = _time(lambda: run(looped), args.repeats)
        print(f"{precision:<10}{args.batch / t_fold:>14.1f}{args.batch / t_loop:>18.1f}{t_loop / t_fold:>8.2f}")


if __name__ == "__main__":
    main()
