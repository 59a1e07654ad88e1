"""JUMP plate throughput, stage by stage, and the projected time of one full 384-well plate on this machine.

Builds the miniature JUMP source of the cellssl-jumpcp tests (real BBBC021 / BBBC022 pixels from
``../shared/data``, 240 x 240 sites of 5 uint16 channels) in a temporary folder, then times each stage
separately on its sites (median of ``--repeats`` runs after a warm-up):

- decode: ``tifffile.imread`` of the 5 channel files of a site (sites/s, megapixels/s);
- illumination correction: scale to [0, 1] and divide by the 5 ``Illum`` functions (sites/s);
- nucleus finding: :func:`cellssl_jumpcp.nuclei.find_nuclei` on the corrected DNA channel (sites/s);
- cropping: ``crop_size`` windows of the corrected sites around the nuclei found (cells/s);
- embedding: the ``jump_profiles`` model (ViT-tiny/8 at 64 px, bag of channels: 5 single-channel passes
  folded into the batch) in fp32 and bf16 autocast; the faster one is used in the projection (cells/s);
- aggregation: median well profiles of a plate's cells, streamed from Parquet shards
  (:func:`cellssl_jumpcp.profiles.iter_plates` + :func:`well_profiles`) (cells/s).

Peak memory: ``tracemalloc`` peak of each stage (Python / NumPy allocations) and the process's maximum RSS
(``resource.getrusage``). The projection scales the per-pixel stages (decode, illumination, nuclei) to
``--site-px`` sites and the per-cell stages to ``--cells-per-site`` cells per site, for 384 wells x 9 sites;
it then says how many cells/s a GPU must embed so that the CPU-side stages (run on ``--workers`` processes)
are not the bottleneck.

    python benchmarks/jump_plate.py                     # defaults: 1080 px sites, 150 cells per site, 2 workers
    python benchmarks/jump_plate.py --site-px 1080 --cells-per-site 200 --workers 8 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins" / "cellssl-jumpcp" / "tests"))

WELLS, SITES_PER_WELL = 384, 9


def timed(fn, repeats: int) -> tuple[float, int]:
    """``(median seconds, tracemalloc peak bytes)`` of ``fn()``: ``repeats`` timed runs after one warm-up, then one
    run under ``tracemalloc`` for the peak (tracing slows allocations, so it is not timed)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    try:
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return statistics.median(times), peak


def bf16_matmul(threads: int, size: int = 1024, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of a ``size`` x ``size`` matmul in fp32 and bf16 on this CPU."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        seconds, _ = timed(lambda a=a, b=b: a @ b, repeats)
        out[name] = 2 * size**3 / seconds / 1e9
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="the shared real images")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the embedding")
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="cells per embedding batch")
    parser.add_argument("--site-px", type=int, default=1080, help="side of a real site for the projection")
    parser.add_argument("--cells-per-site", type=float, default=150.0, help="cells per real site for the projection")
    parser.add_argument("--workers", type=int, default=2, help="CPU processes decoding / segmenting in parallel")
    parser.add_argument("--agg-cells-per-site", type=int, default=4, help="cells per site of the aggregation plate")
    args = parser.parse_args()

    import tifffile
    import torch
    from jump_fixture import BATCH, CHANNELS, PLATES, build_jump_source, illumination

    from cellssl.channels.bag import BagOfChannels, BagOfChannelsConfig
    from cellssl.embed.store import EmbeddingWriter
    from cellssl.models.vit import ViTConfig, build_vit
    from cellssl_jumpcp.cells import crop_window, inside
    from cellssl_jumpcp.nuclei import find_nuclei
    from cellssl_jumpcp.profiles import iter_plates, well_profiles

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="jump_bench_"))
    fixture = build_jump_source(Path(args.data), tmp)
    sites = fixture.sites.reset_index(drop=True)
    files = [[fixture.root / "images" / BATCH / "images" / r.Metadata_Plate /
              f"{r.Metadata_Plate}_{r.Metadata_Well}_s{r.Metadata_Site}_{c}.tiff" for c in CHANNELS]
             for r in sites.itertuples(index=False)]
    illum = {p: np.stack([illumination(i, c) for c in range(len(CHANNELS))]) for i, p in enumerate(PLATES)}
    plates = sites["Metadata_Plate"].tolist()
    n_sites = len(sites)
    site_px = 240 * 240

    raw: list[np.ndarray] = []
    corrected: list[np.ndarray] = []
    found: list[np.ndarray] = []

    def decode() -> None:
        raw[:] = [np.stack([tifffile.imread(f) for f in paths]) for paths in files]

    def correct() -> None:
        corrected[:] = [r.astype(np.float32) / 65535.0 / illum[p] for r, p in zip(raw, plates, strict=True)]

    def nuclei() -> None:
        found[:] = [find_nuclei(site[0], 60, 1.0, 7) for site in corrected]

    size = args.crop_size
    crops: list[np.ndarray] = []

    def crop() -> None:
        out = []
        for site, centres in zip(corrected, found, strict=True):
            for y, x in centres[inside(centres, site.shape[1:], size)]:
                top, left = crop_window(y, size), crop_window(x, size)
                out.append(site[:, top : top + size, left : left + size])
        crops[:] = [np.stack(out)]

    results = {}
    for name, fn in (("decode", decode), ("illumination", correct), ("nuclei", nuclei), ("crop", crop)):
        results[name] = timed(fn, args.repeats)
        print(f"timed {name}", file=sys.stderr, flush=True)
    cells = crops[0]
    n_cells = len(cells)

    model = build_vit(ViTConfig(arch="vit_tiny", patch_size=8, img_size=size, num_register_tokens=2,
                                layerscale_init=None), in_chans=1).eval()
    strategy = BagOfChannels(BagOfChannelsConfig(aggregate="concat"))
    names = [c.lower() for c in CHANNELS]
    batch = torch.from_numpy(np.ascontiguousarray(cells[: args.batch]))
    embed_rates = {}
    for precision in ("fp32", "bf16"):
        context = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

        def embed(context=context) -> None:
            with torch.no_grad(), context:
                strategy.embed(model, batch, names)

        seconds, peak = timed(embed, args.repeats)
        embed_rates[precision] = (len(batch) / seconds, peak)
        print(f"timed embed {precision}", file=sys.stderr, flush=True)
    best = max(embed_rates, key=lambda k: embed_rates[k][0])

    # aggregation: one 384-well plate of cells (args.cells_per_site per site) with the embedding's width
    with torch.no_grad():
        dim = strategy.embed(model, batch[:1], names).shape[1]
    plate_cells = WELLS * SITES_PER_WELL * args.agg_cells_per_site  # a plate's shape, fewer cells: rate is per cell
    rng = np.random.default_rng(0)
    import pandas as pd

    wells = [f"{chr(65 + w // 24)}{w % 24 + 1:02d}" for w in range(WELLS)]
    meta = pd.DataFrame({"Metadata_Plate": "P1", "Metadata_Well": np.repeat(wells, plate_cells // WELLS)})
    with EmbeddingWriter(tmp / "agg", shard_rows=20000) as writer:
        writer.write(meta, rng.normal(size=(len(meta), dim)).astype(np.float32))
    results["aggregation"] = timed(lambda: well_profiles(iter_plates([tmp / "agg"], "Metadata_Plate"),
                                                         "Metadata_Plate", "Metadata_Well"), args.repeats)
    agg_cells = len(meta)

    gflops = bf16_matmul(args.threads)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"JUMP plate stages on this CPU ({args.threads} torch threads; median of {args.repeats}; {n_sites} sites of "
          f"240 x 240 x 5 ch, {n_cells} cells, crops {size} px)")
    print(f"{'stage':<22}{'rate':>20}{'per site / cell':>18}{'peak traced MB':>16}")
    per_site = {}
    for name in ("decode", "illumination", "nuclei"):
        seconds, peak = results[name]
        per_site[name] = seconds / n_sites
        print(f"{name:<22}{n_sites / seconds:>12.1f} sites/s{1e3 * seconds / n_sites:>15.2f} ms{peak / 1e6:>16.1f}")
    seconds, peak = results["crop"]
    crop_cell = seconds / n_cells
    print(f"{'crop':<22}{n_cells / seconds:>12.0f} cells/s{1e6 * crop_cell:>15.1f} us{peak / 1e6:>16.1f}")
    for precision, (rate, peak) in embed_rates.items():
        mark = " *" if precision == best else ""
        print(f"{'embed ' + precision + mark:<22}{rate:>12.1f} cells/s{1e3 / rate:>15.2f} ms{peak / 1e6:>16.1f}")
    seconds, peak = results["aggregation"]
    agg_cell = seconds / agg_cells
    print(f"{'aggregate (median)':<22}{agg_cells / seconds:>12.0f} cells/s{1e6 * agg_cell:>15.2f} us{peak / 1e6:>16.1f}"
          f"   ({agg_cells} cells x {dim} features, one plate)")
    print(f"matmul 1024^2: fp32 {gflops['fp32']:.1f} GFLOP/s, bf16 {gflops['bf16']:.1f} GFLOP/s "
          f"(bf16 / fp32 = {gflops['bf16'] / gflops['fp32']:.2f}); embedding uses {best}")
    print(f"max RSS of this process: {maxrss:.0f} MB")

    scale = args.site_px**2 / site_px
    total_sites = WELLS * SITES_PER_WELL
    total_cells = total_sites * args.cells_per_site
    cpu_site = sum(per_site.values()) * scale
    cpu_cells = (crop_cell + agg_cell) * total_cells
    cpu_total = cpu_site * total_sites + cpu_cells
    embed_seconds = total_cells / embed_rates[best][0]
    print(f"\nprojection: one 384-well plate, {SITES_PER_WELL} sites/well = {total_sites} sites of {args.site_px} px "
          f"(x{scale:.1f} the pixels), {args.cells_per_site:.0f} cells/site = {total_cells:.0f} cells")
    for name, value in per_site.items():
        print(f"  {name:<20}{value * scale * total_sites / 60:>8.1f} min")
    print(f"  {'crop + aggregate':<20}{cpu_cells / 60:>8.1f} min")
    print(f"  {'embed (' + best + ', CPU)':<20}{embed_seconds / 60:>8.1f} min")
    print(f"  total on this CPU: {(cpu_total + embed_seconds) / 3600:.2f} h in one process")
    need = total_cells / (cpu_total / args.workers)
    print(f"  CPU-side stages on {args.workers} worker(s): {cpu_total / args.workers / 60:.1f} min -> a GPU must embed "
          f">= {need:.0f} cells/s ({need * len(CHANNELS):.0f} single-channel {size} px images/s) to keep up; "
          f"this CPU embeds {embed_rates[best][0]:.0f} cells/s")


if __name__ == "__main__":
    main()
