"""Edges of cellssl.data.normalize that mutation testing found unpinned: the stats file, errors, eps, moments."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from torch.utils.data import Dataset

from cellssl.data.normalize import (
    ChannelStats,
    DatasetNormalizer,
    NormalizeConfig,
    PerImageNormalizer,
    build_normalizer,
    compute_channel_stats,
)
from cellssl.data.sample import CellSample
from cellssl.errors import ConfigError, DataError


class Samples(Dataset):
    """A list of ``(image, channels, meta)`` as CellSamples."""

    def __init__(self, items: list[tuple[torch.Tensor, tuple[str, ...], dict]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> CellSample:
        image, channels, meta = self.items[index]
        return CellSample(image, channels, index, meta)


@pytest.fixture(scope="module")
def jurkat_images(shared_data: Path) -> list[torch.Tensor]:
    folder = shared_data / "jurkat-cellcycle"
    paths = sorted(folder.rglob("*.tif*"))[:4]
    return [torch.from_numpy(tifffile.imread(p).astype(np.float32) / 65535.0) for p in paths]


# ------------------------------------------------------------------------------------------------ the JSON file


def test_saved_file_is_indented_sorted_json(tmp_path: Path) -> None:
    stats = ChannelStats(mean={"rna": 0.5, "dna": 0.25}, std={"rna": 0.125, "dna": 1.0}, pixels={"rna": 4, "dna": 4},
                         num_images=1, fingerprint="abc123")
    text = stats.save(tmp_path / "s.json").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == "{" and lines[1] == '  "fingerprint": "abc123",' and text.endswith("}\n")
    assert [line.strip().split(":")[0] for line in lines if line.startswith('  "')] == [
        '"fingerprint"', '"mean"', '"num_images"', '"pixels"', '"std"']
    assert lines[lines.index('  "mean": {') + 1] == '    "dna": 0.25,'  # keys sorted inside each object too
    assert ChannelStats.load(tmp_path / "s.json").fingerprint == "abc123"


def test_minimal_file_loads_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "min.json"
    path.write_text(json.dumps({"mean": {"dna": 2}, "std": {"dna": 0.5}}))
    stats = ChannelStats.load(path)
    assert stats.mean == {"dna": 2.0} and stats.std == {"dna": 0.5}
    assert stats.pixels == {} and stats.num_images == 0 and stats.fingerprint == "" and stats.source == str(path)
    path.write_text(json.dumps({"mean": {"dna": 2}, "std": {"dna": 0.5}, "fingerprint": None}))
    assert ChannelStats.load(path).fingerprint == ""


def test_stats_file_error_messages(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(DataError, match=r"^channel stats file .*nope\.json does not exist; compute it with "
                                        r"cellssl\.data\.normalize\.compute_channel_stats\(\.\.\.\)\.save\(path\)$"):
        ChannelStats.load(missing)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"mean": {"dna": 1.0}, "std": {"rna": 1.0}}))
    with pytest.raises(DataError, match=r"^channel stats file .*bad\.json: 'mean' and 'std' name different "
                                        r"channels$"):
        ChannelStats.load(bad)
    for value in ("NaN", "Infinity", '"0.5"'):
        bad.write_text('{"mean": {"dna": 1.0}, "std": {"dna": ' + value + "}}")
        with pytest.raises(DataError, match=r"^channel stats file .*bad\.json holds non-numeric or non-finite "
                                            r"values; recompute it$"):
            ChannelStats.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(DataError, match=r"^channel stats file .*bad\.json lacks 'mean' and 'std' objects keyed by "
                                        r"channel name$"):
        ChannelStats.load(bad)
    bad.write_text("{oops")
    with pytest.raises(DataError, match=r"^channel stats file .*bad\.json is not readable JSON \(.*\); recompute "
                                        r"it$"):
        ChannelStats.load(bad)


# ------------------------------------------------------------------------------------------------ statistics


def test_stats_over_real_images_with_different_channel_sets(jurkat_images: list[torch.Tensor]) -> None:
    a, b, c = jurkat_images[:3]
    data = Samples([(a, ("brightfield", "dna", "darkfield"), {}), (b[1:2], ("dna",), {}),
                    (c[[2, 1]], ("darkfield", "dna"), {})])
    stats = compute_channel_stats(data, progress=False)
    dna = np.concatenate([a[1].numpy().ravel(), b[1].numpy().ravel(), c[1].numpy().ravel()]).astype(np.float64)
    assert stats.num_images == 3 and stats.channels == ("brightfield", "dna", "darkfield")
    assert stats.pixels == {"brightfield": a[0].numel(), "dna": dna.size, "darkfield": 2 * a[0].numel()}
    assert stats.mean["dna"] == pytest.approx(dna.mean(), rel=1e-12)
    assert stats.std["dna"] == pytest.approx(dna.std(), rel=1e-12)
    bright = a[0].numpy().astype(np.float64)
    assert stats.std["brightfield"] == pytest.approx(bright.std(), rel=1e-12)


def test_stats_of_single_pixel_images() -> None:
    values = [3.0, 5.0, 10.0]
    data = Samples([(torch.tensor([[[v]]]), ("dna",), {}) for v in values])
    stats = compute_channel_stats(data, progress=False)
    assert stats.pixels == {"dna": 3} and stats.mean["dna"] == pytest.approx(6.0)
    assert stats.std["dna"] == pytest.approx(float(np.std(values)), rel=1e-12)


def test_stats_of_a_single_image(jurkat_images: list[torch.Tensor]) -> None:
    stats = compute_channel_stats(Samples([(jurkat_images[0], ("brightfield", "dna", "darkfield"), {})]),
                                  progress=False)
    assert stats.num_images == 1
    assert stats.mean["dna"] == pytest.approx(float(jurkat_images[0][1].double().mean()), rel=1e-12)


def test_max_samples_bounds(jurkat_images: list[torch.Tensor]) -> None:
    data = Samples([(img, ("brightfield", "dna", "darkfield"), {}) for img in jurkat_images])
    every = compute_channel_stats(data, progress=False)
    for max_samples in (0, 4, 9):  # 0 and >= len: every sample
        assert compute_channel_stats(data, max_samples=max_samples, progress=False).mean == every.mean
    three = compute_channel_stats(data, max_samples=3, seed=1, progress=False)
    picked = np.sort(np.random.default_rng(1).choice(4, size=3, replace=False))
    dna = np.concatenate([jurkat_images[i][1].numpy().ravel() for i in picked]).astype(np.float64)
    assert three.num_images == 3 and three.mean["dna"] == pytest.approx(dna.mean(), rel=1e-12)


def test_non_finite_pixel_names_sample_channel_and_metadata(jurkat_images: list[torch.Tensor]) -> None:
    broken = jurkat_images[1].clone()
    broken[2, 5, 7] = float("nan")
    meta = {"plate": "P1", "well": "A01", "site": 3, "phase": "G1", "extra": "not shown"}
    data = Samples([(jurkat_images[0], ("brightfield", "dna", "darkfield"), {}),
                    (broken, ("brightfield", "dna", "darkfield"), meta)])
    with pytest.raises(DataError, match=r"^sample 1 has non-finite pixel values \(NaN or inf\) in channel 'darkfield' "
                                        r"\(metadata plate=P1, well=A01, site=3, phase=G1\); the channel statistics "
                                        r"would not be finite\. Fix or remove that image \(on_corrupt: skip drops such "
                                        r"rows\)\.$"):
        compute_channel_stats(data, progress=False)
    long = {"path": "x" * 300}
    with pytest.raises(DataError, match=r"\(metadata path=x{195}\.\.\.\)"):
        compute_channel_stats(Samples([(broken, ("a", "b", "c"), long)]), progress=False)
    # the metadata text is cut (and marked) from 200 characters on: "path=" + 195 is 200, + 194 is 199
    with pytest.raises(DataError, match=r"\(metadata path=x{195}\.\.\.\)"):
        compute_channel_stats(Samples([(broken, ("a", "b", "c"), {"path": "x" * 195})]), progress=False)
    with pytest.raises(DataError, match=r"\(metadata path=x{194}\)"):
        compute_channel_stats(Samples([(broken, ("a", "b", "c"), {"path": "x" * 194})]), progress=False)


def test_overflowing_stats_are_refused() -> None:
    huge = torch.tensor([[[1e200, -1e200]]], dtype=torch.float64)  # squared deviations overflow float64
    with np.errstate(over="ignore"), pytest.raises(DataError, match=r"^channel statistics of channel\(s\) \['dna'\] "
                                                                    "are not finite"):
        compute_channel_stats(Samples([(huge, ("dna",), {})] * 2), progress=False)


def test_empty_dataset_is_refused() -> None:
    with pytest.raises(DataError, match=r"^cannot compute channel statistics of an empty dataset$"):
        compute_channel_stats(Samples([]), progress=False)


# ------------------------------------------------------------------------------------------------ normalisers


def test_shape_errors_name_expected_channels() -> None:
    norm = build_normalizer(NormalizeConfig())
    for bad in (torch.rand(4, 4), torch.rand(1, 1, 2, 4, 4)):
        with pytest.raises(ValueError, match=r"^expected \(C, H, W\) or \(B, C, H, W\) with C=2 "
                                             r"\(\('a', 'b'\)\), got "):
            norm(bad, ("a", "b"))
    assert norm(torch.rand(3, 2, 4, 4), ("a", "b")).shape == (3, 2, 4, 4)
    identity = build_normalizer(NormalizeConfig(mode="none"))
    with pytest.raises(ValueError, match=r"C=2"):
        identity(torch.rand(3, 4, 4), ("a", "b"))


def test_default_eps_is_one_e_minus_seven() -> None:
    image = torch.tensor([[[0.0, 2e-7]]], dtype=torch.float64)  # mean 1e-7, std 1e-7
    out = build_normalizer(NormalizeConfig())(image, ("a",))
    torch.testing.assert_close(out, torch.tensor([[[-0.5, 0.5]]], dtype=torch.float64))
    stats = ChannelStats(mean={"a": 0.0}, std={"a": 1e-7})
    torch.testing.assert_close(DatasetNormalizer(stats)(image, ("a",)), torch.tensor([[[0.0, 1.0]]],
                                                                                    dtype=torch.float64))
    wide = build_normalizer(NormalizeConfig(mode="dataset", eps=0.5), stats)
    torch.testing.assert_close(wide(image, ("a",)), image / (1e-7 + 0.5))


def test_per_image_normalizer_default_eps() -> None:
    image = torch.tensor([[[0.0, 2e-7]]], dtype=torch.float64)
    torch.testing.assert_close(PerImageNormalizer()(image, ("a",)), torch.tensor([[[-0.5, 0.5]]],
                                                                                dtype=torch.float64))


def test_dataset_normalizer_caches_per_channel_order() -> None:
    stats = ChannelStats(mean={"a": 1.0, "b": 10.0}, std={"a": 1.0, "b": 2.0})
    norm = DatasetNormalizer(stats, eps=0.0)
    image = torch.tensor([[[3.0]], [[14.0]]])
    torch.testing.assert_close(norm(image, ("a", "b")), torch.tensor([[[2.0]], [[2.0]]]))
    torch.testing.assert_close(norm(image, ("b", "a")), torch.tensor([[[-3.5]], [[13.0]]]))
    torch.testing.assert_close(norm(image, ("a", "b")), torch.tensor([[[2.0]], [[2.0]]]))
    assert sorted(norm._cache) == [("a", "b"), ("b", "a")]


def test_missing_channel_message_without_a_source() -> None:
    norm = DatasetNormalizer(ChannelStats(mean={"dna": 0.0}, std={"dna": 1.0}))
    with pytest.raises(DataError, match=r"^channel stats have no entry for channel\(s\) \['rna'\] \(stats cover "
                                        r"\['dna'\]\); recompute them with compute_channel_stats on data that has "
                                        r"these channels$"):
        norm(torch.rand(2, 3, 3), ("dna", "rna"))


def test_dataset_mode_without_stats_message() -> None:
    with pytest.raises(ConfigError, match=r"mode 'dataset' needs per-channel statistics: set stats_path to a JSON "
                                          r"file written by ChannelStats\.save \(compute it once with "
                                          r"compute_channel_stats\)"):
        build_normalizer(NormalizeConfig(mode="dataset"))


def test_explicit_stats_win_over_stats_path(tmp_path: Path) -> None:
    ChannelStats(mean={"a": 100.0}, std={"a": 1.0}).save(tmp_path / "s.json")
    config = NormalizeConfig(mode="dataset", stats_path=str(tmp_path / "s.json"), eps=0.0)
    given = build_normalizer(config, ChannelStats(mean={"a": 1.0}, std={"a": 1.0}))
    assert float(given(torch.full((1, 1, 1), 3.0), ("a",))) == 2.0
    assert float(build_normalizer(config)(torch.full((1, 1, 1), 3.0), ("a",))) == -97.0


class PidRecorder(Samples):
    """Samples that write the id of the process reading each one into ``folder`` (picklable for workers)."""

    def __init__(self, items: list, folder: Path) -> None:
        super().__init__(items)
        self.folder = folder

    def __getitem__(self, index: int) -> CellSample:
        (self.folder / f"{index}.pid").write_text(str(os.getpid()))
        return super().__getitem__(index)


def test_reads_in_this_process_by_default_and_in_workers_when_asked(tmp_path: Path,
                                                                    jurkat_images: list[torch.Tensor]) -> None:
    items = [(img[1:2], ("dna",), {}) for img in jurkat_images[:2]]
    (tmp_path / "main").mkdir()
    (tmp_path / "workers").mkdir()
    here = compute_channel_stats(PidRecorder(items, tmp_path / "main"), progress=False)
    there = compute_channel_stats(PidRecorder(items, tmp_path / "workers"), num_workers=1, progress=False)
    assert {p.read_text() for p in (tmp_path / "main").iterdir()} == {str(os.getpid())}
    worker_pids = {p.read_text() for p in (tmp_path / "workers").iterdir()}
    assert len(worker_pids) == 1 and str(os.getpid()) not in worker_pids
    assert here.mean == there.mean and here.std == there.std


def test_default_seed_and_one_sample(jurkat_images: list[torch.Tensor]) -> None:
    data = Samples([(img, ("brightfield", "dna", "darkfield"), {}) for img in jurkat_images])
    picked = np.sort(np.random.default_rng(0).choice(4, size=3, replace=False))
    dna = np.concatenate([jurkat_images[i][1].numpy().ravel() for i in picked]).astype(np.float64)
    assert compute_channel_stats(data, max_samples=3, progress=False).mean["dna"] == pytest.approx(dna.mean(),
                                                                                                  rel=1e-12)
    one = compute_channel_stats(data, max_samples=1, seed=2, progress=False)
    first = int(np.random.default_rng(2).choice(4, size=1, replace=False)[0])
    assert one.num_images == 1 and one.mean["dna"] == pytest.approx(float(jurkat_images[first][1].double().mean()))


def test_progress_bar_counts_images(capsys: pytest.CaptureFixture[str], jurkat_images: list[torch.Tensor]) -> None:
    data = Samples([(img[:1], ("brightfield",), {}) for img in jurkat_images])
    compute_channel_stats(data)
    err = capsys.readouterr().err
    assert re.search(r"(^|\r)channel stats: 100%\|.*\| 4/4 \[[^]]*, [\d.]+img/s\]", err), err
    compute_channel_stats(data, progress=False)
    assert capsys.readouterr().err == ""


def test_dataset_stats_are_applied_in_float64() -> None:
    third = 1.0 / 3.0  # not representable in float32
    stats = ChannelStats(mean={"a": third}, std={"a": third})
    image = torch.tensor([[[third, 2 * third]]], dtype=torch.float64)
    out = DatasetNormalizer(stats, eps=0.0)(image, ("a",))
    assert out.dtype == torch.float64
    assert float(out[0, 0, 0]) == 0.0
    assert float(out[0, 0, 1]) == pytest.approx((2 * third - third) / third, rel=1e-13)
