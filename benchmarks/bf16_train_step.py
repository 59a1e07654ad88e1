"""bf16 training on this CPU: one forward + backward of a ViT in fp32, in bf16 autocast on fp32 units (what
``train.precision: bf16`` runs on a CPU without native bf16: :func:`cellssl.models.bf16.bf16_autocast`), and in
plain bf16 autocast (PyTorch's bf16 kernels, emulated on such a CPU).

Prints the median seconds per step over ``--repeats`` interleaved rounds (after one warm-up step each), the ratios,
and how close the two bf16 variants' gradients are (the smallest cosine over the parameters)::

    python benchmarks/bf16_train_step.py                    # ViT-S/8 at 64 px, batch 8, 1 thread
    python benchmarks/bf16_train_step.py --arch vit_tiny --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F


def _step(vit: torch.nn.Module, images: torch.Tensor, context: Callable[[], object]) -> dict[str, torch.Tensor]:
    vit.zero_grad(set_to_none=True)
    with context():  # type: ignore[attr-defined]
        out = vit(images)
    out.float().pow(2).mean().backward()
    return {name: p.grad.detach().clone() for name, p in vit.named_parameters() if p.grad is not None}


def main() -> None:
    from cellssl.models import bf16
    from cellssl.models.vit import ViTConfig, build_vit

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vit = build_vit(ViTConfig(arch=args.arch, patch_size=args.patch, img_size=args.size, layerscale_init=None),
                    in_chans=1)
    images = torch.rand(args.batch, 1, args.size, args.size)
    variants: dict[str, Callable[[], object]] = {
        "fp32": lambda: torch.autocast("cpu", enabled=False),
        "bf16 autocast on fp32 units (train.precision: bf16 here)": bf16.autocast_on_fp32_units,
        "bf16 autocast on PyTorch's bf16 kernels": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
    }
    native = bf16.native_bf16("cpu")
    print(f"{args.arch}/{args.patch} at {args.size} px, batch {args.batch}, forward + backward, "
          f"{args.threads} thread(s), torch {torch.__version__}, native bf16 on this CPU: {'yes' if native else 'no'}, "
          f"load average {os.getloadavg()[0]:.1f} at start, median of {args.repeats}")
    grads = {name: _step(vit, images, context) for name, context in variants.items()}  # warm-up, kept for numerics
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, context in variants.items():
            start = time.perf_counter()
            _step(vit, images, context)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{'variant':<60}{'s/step':>9}{'vs fp32':>9}")
    for name, seconds in medians.items():
        print(f"{name:<60}{seconds:>9.3f}{medians['fp32'] / seconds:>8.2f}x")
    units, kernels = grads[list(variants)[1]], grads[list(variants)[2]]
    cosine = min(float(F.cosine_similarity(units[n].flatten(), kernels[n].flatten(), dim=0)) for n in units)
    speedup = medians[list(variants)[2]] / medians[list(variants)[1]]
    print(f"fp32 units vs bf16 kernels: {speedup:.1f}x faster; smallest gradient cosine between them {cosine:.5f}")


if __name__ == "__main__":
    main()
