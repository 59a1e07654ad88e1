"""Embedding inference modes: bf16 weights cast once vs autocast, torch.compile and its eager fallback.

Tolerances against fp32 (a tiny ViT, per-image standardised Jurkat channels): bf16 (either mode) keeps every
embedding's cosine to fp32 >= 0.999 and the largest absolute difference <= 2 % of the largest fp32 value
(measured: cosine >= 0.99995, 0.8 % for cast, 0.5 % for autocast); compiled fp32 equals eager fp32 within
rtol 1e-4 / atol 1e-5. The compile test costs about 20-60 s on a 2-core CPU (inductor compiles the ViT).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from cellssl.config.schema import EmbedSection
from cellssl.config.validate import validate_block
from cellssl.embed import fast
from cellssl.embed.embedder import Embedder
from cellssl.errors import ConfigError, DataError
from cellssl.models.vit import ViTConfig, build_vit


@pytest.fixture
def cells(shared_data: Path) -> torch.Tensor:
    """Two Jurkat cells of each phase, channels folded: ``(42, 1, 40, 40)``, each standardised."""
    root = shared_data / "jurkat-cellcycle"
    meta = pd.read_csv(root / "metadata.csv").groupby("phase").head(2)
    images = torch.from_numpy(np.stack([tifffile.imread(root / p) for p in meta["path"]]).astype(np.float32))
    images = (images - images.mean((2, 3), keepdim=True)) / (images.std((2, 3), keepdim=True) + 1e-7)
    return images.reshape(-1, 1, 40, 40)


@pytest.fixture
def vit() -> torch.nn.Module:
    config = ViTConfig(arch="vit_small", patch_size=8, img_size=40, embed_dim=64, depth=2, num_heads=2,
                       layerscale_init=None)
    return build_vit(config, in_chans=1).eval()


def _run(inference: fast.Inference, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), inference.context():
        return inference.module(inference.inputs(images)).float()


def _assert_close_to_fp32(out: torch.Tensor, ref: torch.Tensor) -> None:
    cosine = torch.nn.functional.cosine_similarity(out, ref)
    assert cosine.min() >= 0.999, cosine.min()
    assert (out - ref).abs().max() <= 0.02 * ref.abs().max(), ((out - ref).abs().max(), ref.abs().max())


def test_auto_casts_on_every_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert fast.resolve_bf16_mode("auto", "cuda") == "cast"
    assert fast.resolve_bf16_mode("cast", "cpu") == "cast" and fast.resolve_bf16_mode("autocast", "cuda") == "autocast"
    for native in (False, True):
        monkeypatch.setattr(fast, "native_bf16", lambda device, native=native: native)
        assert fast.resolve_bf16_mode("auto", "cpu") == "cast"
    with pytest.raises(ValueError, match=r"embed.bf16 must be one of auto, cast, autocast, got 'half'"):
        fast.resolve_bf16_mode("half", "cpu")


def test_numerics_labels_keep_autocast_as_bf16_and_ignore_the_mode_in_fp32() -> None:
    assert fast.numerics("fp32", "cast", "cpu") == "fp32"
    assert fast.numerics("bf16", "autocast", "cpu") == "bf16"  # the label embedding sets had before bf16 casting
    assert fast.numerics("bf16", "cast", "cpu") == "bf16-cast"
    assert fast.numerics("bf16", "auto", "cuda") == "bf16-cast" and fast.numerics("bf16", "auto", "cpu") == "bf16-cast"


def test_cast_runs_a_bf16_copy_close_to_fp32(vit: torch.nn.Module, cells: torch.Tensor) -> None:
    with torch.no_grad():
        ref = vit(cells)
    inference = fast.prepare_for_inference(vit, "bf16", "cast", device="cpu")
    assert (inference.autocast, inference.input_dtype, inference.numerics) == (False, torch.bfloat16, "bf16-cast")
    assert {p.dtype for p in inference.module.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in vit.parameters()} == {torch.float32}  # the caller's backbone is not cast
    cast = _run(inference, cells)
    _assert_close_to_fp32(cast, ref)
    autocast = _run(fast.prepare_for_inference(vit, "bf16", "autocast"), cells)
    _assert_close_to_fp32(autocast, ref)
    assert not torch.equal(cast, autocast)  # the two modes give other numbers: the fingerprint tells them apart
    fp32 = fast.prepare_for_inference(vit, "fp32", "cast")
    assert fp32.module is vit and not fp32.autocast and fp32.numerics == "fp32"
    torch.testing.assert_close(_run(fp32, cells), ref, rtol=0, atol=0)


def test_autocast_on_a_cpu_without_native_bf16_warns_once(vit: torch.nn.Module, caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast, "native_bf16", lambda device: False)
    monkeypatch.setattr(fast, "_WARNED_SLOW_BF16", set())
    with caplog.at_level(logging.WARNING, logger="cellssl.embed.fast"):
        fast.prepare_for_inference(vit, "bf16", "cast")
    assert caplog.text == ""  # cast multiplies with fp32 units there: not slow
    with caplog.at_level(logging.WARNING, logger="cellssl.embed.fast"):
        fast.prepare_for_inference(vit, "bf16", "autocast")
    assert "3-10x slower than fp32" in caplog.text and "embed.bf16=cast" in caplog.text
    assert "embed.precision=fp32" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cellssl.embed.fast"):
        fast.prepare_for_inference(vit, "bf16", "autocast")
    assert caplog.text == ""  # once per process, not once per embedder
    with caplog.at_level(logging.WARNING, logger="cellssl.embed.fast"):
        fast.prepare_for_inference(vit, "fp32")
    assert caplog.text == ""


def test_cast_without_native_bf16_multiplies_in_fp32_and_stays_close_to_fp32(
        vit: torch.nn.Module, cells: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    from cellssl.models.bf16 import Fp32MatmulsForBf16

    with torch.no_grad():
        ref = vit(cells)
    monkeypatch.setattr(fast, "native_bf16", lambda device: True)
    native = fast.prepare_for_inference(vit, "bf16", "cast")
    assert not native.fp32_matmuls and not isinstance(native.context(), Fp32MatmulsForBf16)
    monkeypatch.setattr(fast, "native_bf16", lambda device: False)
    emulated = fast.prepare_for_inference(vit, "bf16", "cast")
    assert emulated.fp32_matmuls and isinstance(emulated.context(), Fp32MatmulsForBf16)
    assert emulated.numerics == "bf16-cast" and {p.dtype for p in emulated.module.parameters()} == {torch.bfloat16}
    out = _run(emulated, cells)
    _assert_close_to_fp32(out, ref)
    # the same bf16 numbers as bf16 kernels, up to the order of the sums: close to the cast mode's own output
    cosine = torch.nn.functional.cosine_similarity(out, _run(native, cells))
    assert cosine.min() >= 0.9999, cosine.min()
    assert not fast.prepare_for_inference(vit, "bf16", "autocast").fp32_matmuls


def test_the_embedder_uses_its_mode_and_an_override_runs_the_fp32_backbone(vit: torch.nn.Module,
                                                                          cells: torch.Tensor) -> None:
    from cellssl.channels.bag import BagOfChannels, BagOfChannelsConfig

    strategy = BagOfChannels(BagOfChannelsConfig(aggregate="concat"))
    images = cells.reshape(14, 3, 40, 40)
    names = ("brightfield", "dna", "darkfield")
    embedder = Embedder(strategy, vit, lambda image, channels: image, precision="bf16", bf16="cast")
    assert embedder.inference.numerics == "bf16-cast" and embedder.backbone is vit
    with torch.no_grad():
        ref = vit(cells).reshape(14, -1)
    cast = embedder.embed_images(images, names)
    assert cast.dtype == torch.float32 and cast.shape == (14, 3 * 64)
    torch.testing.assert_close(cast, _run(embedder.inference, cells).reshape(14, -1), rtol=0, atol=0)
    _assert_close_to_fp32(cast, ref)
    torch.testing.assert_close(embedder.embed_images(images, names, precision="fp32"), ref, rtol=0, atol=0)


@pytest.mark.slow  # inductor compiles the ViT: about 20-60 s on a 2-core CPU
def test_compiled_fp32_matches_eager(vit: torch.nn.Module, cells: torch.Tensor) -> None:
    reason = fast.compile_unavailable("cpu")
    assert reason is None, f"torch.compile should work where a C++ compiler is installed: {reason}"
    inference = fast.prepare_for_inference(vit, "fp32", compile=True)
    assert inference.compiled and inference.module is not vit
    with torch.no_grad():
        ref = vit(cells)
    torch.testing.assert_close(_run(inference, cells), ref, rtol=1e-4, atol=1e-5)
    assert inference.module.embed_dim == 64  # attributes of the backbone stay reachable


@pytest.mark.slow  # inductor compiles the ViT: about 20-60 s on a 2-core CPU
def test_compiled_bf16_cast_with_fp32_matmuls_matches_eager(vit: torch.nn.Module, cells: torch.Tensor,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast, "native_bf16", lambda device: False)  # the fp32-matmul path, whatever this CPU has
    eager = fast.prepare_for_inference(vit, "bf16", "cast")
    compiled = fast.prepare_for_inference(vit, "bf16", "cast", compile=True)
    assert compiled.compiled and compiled.fp32_matmuls
    with torch.no_grad():
        ref = vit(cells)
    out = _run(compiled, cells)
    _assert_close_to_fp32(out, ref)  # the stated bf16 tolerance against fp32
    # against eager cast: inductor may keep a fused intermediate in fp32 where eager rounds it to bf16
    cosine = torch.nn.functional.cosine_similarity(out, _run(eager, cells))
    assert cosine.min() >= 0.9999, cosine.min()


def test_compile_without_a_cxx_compiler_falls_back_to_eager_with_a_warning(
        vit: torch.nn.Module, cells: torch.Tensor, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import torch._dynamo
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "/nonexistent/bin/g++"))
    fast._compile_unavailable.cache_clear()
    torch._dynamo.reset()
    try:
        with caplog.at_level(logging.WARNING, logger="cellssl.embed.fast"):
            inference = fast.prepare_for_inference(vit, "fp32", compile=True)
    finally:
        fast._compile_unavailable.cache_clear()
        torch._dynamo.reset()
    assert not inference.compiled and inference.module is vit
    assert "embed.compile=true but torch.compile cannot run on cpu" in caplog.text
    assert "C++ compiler" in caplog.text and "runs eager" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(_run(inference, cells), vit(cells), rtol=0, atol=0)


def test_embed_section_validates_the_new_keys() -> None:
    section = validate_block(None, EmbedSection, "embed")
    assert (section.bf16, section.compile) == ("auto", False)
    assert validate_block({"bf16": "cast", "compile": True}, EmbedSection, "embed").bf16 == "cast"
    with pytest.raises(ConfigError, match=r"embed.bf16 must be one of auto, cast, autocast .*got 'fast'"):
        validate_block({"bf16": "fast"}, EmbedSection, "embed")
    with pytest.raises(ConfigError, match=r"config key 'embed.compile': wrong type"):
        validate_block({"compile": "sometimes"}, EmbedSection, "embed")


def test_a_cast_embedding_set_records_its_mode_and_is_refused_as_autocast(runs: SimpleNamespace) -> None:
    from cellssl.config.compose import load_run_config
    from cellssl.embed.store import read_embeddings
    from cellssl.pipeline import execute, expected_embedding, start_run

    config = runs.config(per_class=2, embed={"batch_size": 8, "precision": "bf16", "bf16": "cast"})
    run, _ = execute(load_run_config(runs.write(config), []), ["embed"])
    out = runs.tmp / "run" / "embeddings"
    manifest = json.loads(next(out.glob("*manifest.json")).read_text())
    assert manifest["info"]["inference"] == {"numerics": "bf16-cast", "compiled": False}
    assert manifest["info"]["fingerprint_parts"]["precision"] == "bf16-cast"
    table = read_embeddings(out, expected_fingerprint=expected_embedding(run)[0])
    assert table.embeddings.shape == (8, 3 * 32)

    config["embed"]["bf16"] = "autocast"  # in its own run directory: the finished one refuses a changed embed.bf16
    config["run"]["output_dir"] = str(runs.tmp / "autocast")
    other = start_run(load_run_config(runs.write(config, "autocast.yaml"), []))
    fingerprint, parts = expected_embedding(other)
    assert parts["precision"] == "bf16" and fingerprint != manifest["fingerprint"]
    with pytest.raises(DataError, match=r"differences in: .*precision"):
        read_embeddings(out, expected_fingerprint=fingerprint, expected_parts=parts)

    config["run"]["output_dir"] = str(runs.tmp / "fp32")
    config["embed"].update(precision="fp32", bf16="cast", compile=True)
    fp32_cast = expected_embedding(start_run(load_run_config(runs.write(config, "fp32.yaml"), [])))
    config["embed"].update(bf16="autocast", compile=False)
    fp32_autocast = expected_embedding(start_run(load_run_config(runs.write(config, "fp32.yaml"), [])))
    assert fp32_cast[0] == fp32_autocast[0]  # fp32 ignores the bf16 mode; compiling changes no recipe


def test_the_throughput_benchmark_prints_its_tables(shared_data: Path, run_benchmark: Any) -> None:
    import re

    out = run_benchmark("embed_throughput", "--data", str(shared_data / "jurkat-cellcycle"), "--arch", "vit_tiny",
                        "--size", "40", "--cells", "6", "--batch", "4", "--mode-batch", "2", "--repeats", "1",
                        "--threads", "1", "--skip-compile")
    assert "6 Jurkat cells x 3 channels folded, vit_tiny/8 at 40 px, fp32, batch 4 cells" in out
    rows = re.findall(r"^(backbone only \(preprocessed\)|end to end \(Embedder.export\))\s+([\d.]+)\s+([\d.]+)", out,
                      re.MULTILINE)
    assert [r[0] for r in rows] == ["backbone only (preprocessed)", "end to end (Embedder.export)"]
    assert all(float(images) == pytest.approx(3 * float(cells), rel=0.05) for _, cells, images in rows)
    assert re.search(r"end to end / backbone only throughput: \d+% \(wall clock\), \d+% \(CPU time", out)
    modes = re.findall(r"^(fp32|bf16 autocast|bf16 cast(?: \((?:fp32 matmuls|bf16 kernels)\))?)\s+([\d.]+)\s+([\d.]+)x",
                       out, re.MULTILINE)
    casts = ["bf16 cast"] if fast.native_bf16("cpu") else ["bf16 cast (fp32 matmuls)", "bf16 cast (bf16 kernels)"]
    assert [m[0] for m in modes] == ["fp32", "bf16 autocast", *casts] and modes[0][2] == "1.00"
    assert "compiled" not in out


def test_config_show_lists_the_keys_and_refuses_a_bad_mode(capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from cellssl.cli import main

    quickstart = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
    assert main(["config", "show", quickstart]) == 0
    embed = yaml.safe_load(capsys.readouterr().out)["embed"]
    assert (embed["bf16"], embed["compile"]) == ("auto", False)
    assert main(["config", "show", quickstart, "embed.bf16=cast", "embed.compile=true"]) == 0
    embed = yaml.safe_load(capsys.readouterr().out)["embed"]
    assert (embed["bf16"], embed["compile"]) == ("cast", True)
    assert main(["config", "show", quickstart, "embed.bf16=fast"]) == 2
    assert "embed.bf16 must be one of auto, cast, autocast (how precision bf16 runs), got 'fast'" in \
        capsys.readouterr().err
