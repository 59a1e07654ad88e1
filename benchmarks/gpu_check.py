"""One command that checks cellssl's GPU code paths on a CUDA machine and prints one table.

Checks, in order (each a row: check, device, status, figure, detail):

1. ``attention``: xformers ``memory_efficient_attention`` against SDPA (fp32 reference) on random q, k, v.
2. ``packed multi-crop``: a ViT over global + local crops packed into one sequence with xformers'
   block-diagonal mask against the per-crop-size loop (``crop_packing: off``).
3. ``dinov2 bf16 step``: two full DINOv2 training steps (teacher, student on all crops, iBOT, KoLeo, AdamW,
   EMA) through :class:`~cellssl.train.trainer.Trainer` in bf16; the loss must be finite and the weights move.
4. ``folded vs one-by-one``: a 1-channel ViT embedding C-channel images with the channels folded into the
   batch against one forward pass per channel (bf16 autocast): both results agree; median times of each.
5. ``ddp step``: a 1-process DistributedDataParallel step (NCCL on CUDA); its gradients must equal those of
   the plain module.
6. ``faiss knn``: an exact cosine index (faiss GPU when faiss has GPUs, else CPU) against a numpy
   brute-force top-1.

Without CUDA the command refuses with one line and exit status 2. ``--cpu`` runs the same code paths on
the CPU with tiny sizes (SDPA and ``grouped`` packing stand in where xformers needs CUDA; DDP uses gloo):
a smoke test, not a GPU check. The exit status is 1 when a check fails. Sized to finish within a few
minutes on one GPU.

    .venv/bin/python benchmarks/gpu_check.py
    .venv/bin/python benchmarks/gpu_check.py --cpu
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class Sizes:
    """Problem sizes: ``gpu`` for a real check, ``cpu`` for the tiny smoke run."""

    arch: str
    img: int
    local: int
    patch: int
    batch: int
    channels: int
    prototypes: int
    knn_rows: int
    knn_dim: int
    repeats: int
    vit: tuple[tuple[str, int], ...] = ()  # ViTConfig overrides (embed_dim, depth, num_heads)


GPU_SIZES = Sizes(arch="vit_small", img=224, local=96, patch=16, batch=32, channels=5, prototypes=4096,
                  knn_rows=200_000, knn_dim=384, repeats=5)
CPU_SIZES = Sizes(arch="vit_tiny", img=32, local=16, patch=8, batch=4, channels=3, prototypes=64,
                  knn_rows=2_000, knn_dim=32, repeats=2,
                  vit=(("embed_dim", 32), ("depth", 2), ("num_heads", 2)))


@dataclass
class Row:
    check: str
    device: str
    status: str  # ok | FAIL | skip
    figure: str
    detail: str


def _time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|`` in float32."""
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _vit(sizes: Sizes, in_chans: int, device: torch.device, **overrides: Any) -> torch.nn.Module:
    from cellssl.models.vit import build_vit
    from cellssl.models.vit_config import ViTConfig

    config = ViTConfig(arch=sizes.arch, patch_size=sizes.patch, img_size=sizes.img, **dict(sizes.vit), **overrides)
    return build_vit(config, in_chans).to(device).eval()


def check_attention(sizes: Sizes, device: torch.device) -> Row:
    from cellssl.models.attention import attention, available_backends

    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(sizes.batch, 6, (sizes.img // sizes.patch) ** 2 + 1, 64, device=device, generator=gen)
               for _ in range(3))
    reference = attention(q, k, v, backend="math")
    backend = "xformers" if "xformers" in available_backends() else "sdpa"
    if device.type == "cuda" and backend != "xformers":
        return Row("attention", device.type, "FAIL", "-", "xformers does not import on this CUDA machine")
    tol = 2e-2 if device.type == "cuda" else 1e-5
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = attention(q, k, v, backend=backend)
    err = _max_rel(out, reference)
    seconds = _time(lambda: attention(q, k, v, backend=backend), device, sizes.repeats)
    label = f"{backend} vs math" + (" (bf16)" if device.type == "cuda" else "")
    return Row("attention", device.type, "ok" if err < tol else "FAIL", f"rel err {err:.1e}",
               f"{label}, tol {tol:g}, {seconds * 1e3:.2f} ms/call")


def check_packed(sizes: Sizes, device: torch.device) -> Row:
    from cellssl.models.packed import resolve_mode

    torch.manual_seed(0)
    vit = _vit(sizes, 3, device, crop_packing="auto")
    mode = resolve_mode("auto", device, "auto")
    if device.type == "cuda" and mode != "xformers":
        return Row("packed multi-crop", device.type, "FAIL", "-", f"packing resolved to {mode!r}, not xformers")
    crops = [torch.rand(sizes.batch, 3, sizes.img, sizes.img, device=device),
             torch.rand(sizes.batch * 4, 3, sizes.local, sizes.local, device=device)]
    with torch.no_grad():
        packed = vit.forward_features(crops)
        vit.crop_packing = "off"
        loop = vit.forward_features(crops)
    err = max(_max_rel(p["x_norm_clstoken"], q["x_norm_clstoken"]) for p, q in zip(packed, loop))
    tol = 1e-3 if device.type == "cuda" else 1e-5
    return Row("packed multi-crop", device.type, "ok" if err < tol else "FAIL", f"rel err {err:.1e}",
               f"{mode} packing vs per-crop loop, {sizes.batch} global + {4 * sizes.batch} local crops, tol {tol:g}")


def check_dinov2_step(sizes: Sizes, device: torch.device) -> Row:
    from cellssl.data.normalize import IdentityNormalizer
    from cellssl.data.synthetic import SyntheticCellsConfig, build_synthetic_cells
    from cellssl.models.vit import build_vit
    from cellssl.models.vit_config import ViTConfig
    from cellssl.objectives.dino import HeadConfig
    from cellssl.objectives.dinov2 import DINOv2Config, DINOv2Objective
    from cellssl.train.config import TrainSection
    from cellssl.train.trainer import Trainer

    torch.manual_seed(0)
    vit = ViTConfig(arch=sizes.arch, patch_size=sizes.patch, img_size=sizes.img, **dict(sizes.vit))
    config = DINOv2Config(head=HeadConfig(out_dim=sizes.prototypes, hidden_dim=256, bottleneck_dim=64))
    config.multicrop.global_size, config.multicrop.local_size, config.multicrop.n_local = sizes.img, sizes.local, 4
    objective = DINOv2Objective(config, lambda: build_vit(vit, 3))
    data = build_synthetic_cells(SyntheticCellsConfig(num_samples=sizes.batch, image_size=max(sizes.img, 16),
                                                      num_channels=3))
    section = TrainSection(batch_size=sizes.batch, precision="bf16", progress=False, epochs=10)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(objective, [data], IdentityNormalizer(), section, Path(tmp), device, seed=0)
        trainer.objective.train()
        batch = trainer.collate([trainer.views[key] for key in trainer.plan.batches(0)[0]])
        before = [p.detach().clone() for p in trainer.objective.student_backbone().parameters()]
        losses, times = [], []
        for _ in range(2):
            start = time.perf_counter()
            losses.append(float(trainer.train_step(batch)["loss"]))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        after = list(trainer.objective.student_backbone().parameters())
    moved = sum(float((a.detach() - b).abs().sum()) for a, b in zip(after, before))
    ok = all(np.isfinite(losses)) and moved > 0
    return Row("dinov2 bf16 step", device.type, "ok" if ok else "FAIL", f"{times[-1]:.3f} s/step",
               f"{sizes.arch}/{sizes.patch}, batch {sizes.batch}, losses {losses[0]:.3f} -> {losses[1]:.3f}, "
               f"weights moved {moved:.2e}")


def check_folded(sizes: Sizes, device: torch.device) -> Row:
    from cellssl.api import embed_channels_folded, embed_channels_one_by_one

    torch.manual_seed(0)
    vit = _vit(sizes, 1, device)
    images = torch.rand(sizes.batch, sizes.channels, sizes.img, sizes.img, device=device)

    def run(fn: Callable[..., torch.Tensor]) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            return fn(vit, images)

    err = _max_rel(run(embed_channels_folded), run(embed_channels_one_by_one))
    folded = _time(lambda: run(embed_channels_folded), device, sizes.repeats)
    single = _time(lambda: run(embed_channels_one_by_one), device, sizes.repeats)
    n = sizes.batch
    return Row("folded vs one-by-one", device.type, "ok" if err < 5e-2 else "FAIL",
               f"{n / folded:.1f} vs {n / single:.1f} img/s",
               f"{sizes.channels} channels, batch {n}, speed-up x{single / folded:.2f}, rel diff {err:.1e} (bf16)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_ddp(sizes: Sizes, device: torch.device) -> Row:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.manual_seed(0)
    model = _vit(sizes, 3, device).train()
    images = torch.rand(sizes.batch, 3, sizes.img, sizes.img, device=device)
    model(images).square().mean().backward()
    plain = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
        start = time.perf_counter()
        ddp(images).square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        synced = [p.grad for p in model.parameters() if p.grad is not None]
    finally:
        dist.destroy_process_group()
    err = max(_max_rel(a, b) for a, b in zip(synced, plain))
    ok = len(synced) == len(plain) and err < 1e-4
    return Row("ddp step", device.type, "ok" if ok else "FAIL", f"grad rel err {err:.1e}",
               f"1 process, {backend}, forward + backward {seconds:.3f} s")


def check_knn(sizes: Sizes, device: torch.device) -> Row:
    from cellssl.eval.engines.knn_index import KNNIndexConfig, build_index, search

    rng = np.random.default_rng(0)
    train = rng.standard_normal((sizes.knn_rows, sizes.knn_dim), dtype=np.float32)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    queries = train[rng.choice(sizes.knn_rows, size=1000, replace=sizes.knn_rows < 1000)] + 0.01
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    built = build_index(train, "cosine", KNNIndexConfig(device="auto"), k=1)
    start = time.perf_counter()
    _, ids = search(built, queries, 1)
    seconds = time.perf_counter() - start
    expected = np.argmax(queries @ train.T, axis=1)
    agree = float(np.mean(ids[:, 0] == expected))
    where = built.info["device"]
    return Row("faiss knn", where, "ok" if agree == 1.0 else "FAIL", f"{len(queries) / seconds:.0f} queries/s",
               f"exact cosine, {sizes.knn_rows} x {sizes.knn_dim}, top-1 agreement with numpy {agree:.4f}")


CHECKS = [check_attention, check_packed, check_dinov2_step, check_folded, check_ddp, check_knn]


def run_checks(sizes: Sizes, device: torch.device) -> list[Row]:
    """Every check, each isolated: an exception becomes a FAIL row with its last line."""
    rows = []
    for check in CHECKS:
        name = check.__name__.removeprefix("check_")
        try:
            rows.append(check(sizes, device))
        except Exception as exc:  # report and go on: one table, whatever fails
            traceback.print_exc(file=sys.stderr)
            rows.append(Row(name, device.type, "FAIL", "-", f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}"))
    return rows


def format_table(rows: list[Row]) -> str:
    """The rows as an aligned text table with a header."""
    header = Row("check", "device", "status", "figure", "detail")
    widths = [max(len(getattr(r, f)) for r in [header, *rows]) for f in ("check", "device", "status", "figure")]
    lines = []
    for r in [header, *rows]:
        cells = [getattr(r, f).ljust(w) for f, w in zip(("check", "device", "status", "figure"), widths)]
        lines.append("  ".join([*cells, r.detail]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run the same code paths on the CPU with tiny sizes")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="CPU threads (--cpu)")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); run it on a CUDA machine, or pass "
              "--cpu for a CPU smoke run of the same code paths", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.cpu else torch.device("cuda", 0)
    sizes = CPU_SIZES if args.cpu else GPU_SIZES
    if args.cpu:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"cellssl gpu_check on {name}; torch {torch.__version__}; sizes: {sizes}")
    start = time.perf_counter()
    rows = run_checks(sizes, device)
    print(format_table(rows))
    failed = [r.check for r in rows if r.status == "FAIL"]
    print(f"{len(rows) - len(failed)}/{len(rows)} checks ok in {time.perf_counter() - start:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
