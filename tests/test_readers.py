"""Readers of every image layout, on the real microscopy samples, and explicit bit-depth scaling."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellssl.data.bitdepth import parse_bit_depth, scale_to_unit
from cellssl.data.readers import (
    read_channel_files,
    read_image,
    read_sample_image,
    split_tape,
)
from cellssl.errors import DataError

JURKAT = "jurkat-cellcycle/images/G1/cell_00000.ome.tif"
BBBC021 = "bbbc021-crops/images/B02/fov00_s1_cell0000.tif"
BBBC022 = "fields-of-view/bbbc022/IXMtest_A02_s9.tif"
EXAMPLEHUMAN = [f"fields-of-view/examplehuman/AS_09125_050116030001_D03f00d{i}.tif" for i in range(3)]


def first_jpeg(shared_data: Path, cls: str = "WBC") -> Path:
    return sorted((shared_data / "bccd-bloodcells" / cls).glob("*.jpg"))[0]


# ---------------------------------------------------------------------------------------------- TIFF
def test_ome_tiff_channel_names_and_dtype(shared_data: Path) -> None:
    image = read_image(shared_data / JURKAT)
    assert image.array.shape == (3, 40, 40)
    assert image.array.dtype == np.uint16
    assert image.channel_names == ("brightfield", "dna", "darkfield")
    np.testing.assert_array_equal(image.array, tifffile.imread(shared_data / JURKAT))


def test_imagej_hyperstack_shape(shared_data: Path) -> None:
    image = read_image(shared_data / BBBC022)
    assert image.array.shape == (3, 395, 695)
    assert image.array.dtype == np.uint16
    assert image.channel_names is None  # ImageJ labels are file names, not channel names
    assert int(image.array.max()) == 4095  # a 12-bit camera in a 16-bit file
    np.testing.assert_array_equal(image.array, tifffile.imread(shared_data / BBBC022))


def test_planar_rgb_tiff_is_not_named_red_green_blue(shared_data: Path) -> None:
    image = read_image(shared_data / BBBC021)
    assert image.array.shape == (3, 68, 68)
    assert image.channel_names is None


def test_multipage_tiff_without_metadata(shared_data: Path, tmp_path: Path) -> None:
    crop = tifffile.imread(shared_data / BBBC021)
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as writer:
        for plane in crop:
            writer.write(plane, photometric="minisblack", metadata=None)
    image = read_image(path)
    assert image.array.shape == (3, 68, 68)
    np.testing.assert_array_equal(image.array, crop)


def test_interleaved_rgb_tiff_becomes_chw(shared_data: Path, tmp_path: Path) -> None:
    rgb = np.asarray(Image.open(first_jpeg(shared_data)))
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")
    image = read_image(path)
    np.testing.assert_array_equal(image.array, rgb.transpose(2, 0, 1))


def test_z_stack_of_channels_is_refused(shared_data: Path, tmp_path: Path) -> None:
    crop = tifffile.imread(shared_data / BBBC021)
    path = tmp_path / "zstack.tif"
    tifffile.imwrite(path, np.stack([crop, crop]), imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(DataError, match=r"zstack\.tif has axes 'ZCYX'.*more than one non-spatial axis"):
        read_image(path)


# --------------------------------------------------------------------------------- one file per channel
def test_one_file_per_channel(shared_data: Path) -> None:
    paths = [shared_data / p for p in EXAMPLEHUMAN]
    image = read_channel_files(paths)
    assert image.array.shape == (3, 512, 512)
    assert image.array.dtype == np.uint8
    for channel, path in enumerate(paths):
        np.testing.assert_array_equal(image.array[channel], tifffile.imread(path))
    assert read_sample_image(paths).array.shape == (3, 512, 512)


def test_channel_files_with_different_shapes_name_both_files(shared_data: Path, tmp_path: Path) -> None:
    small = tmp_path / "d1_small.tif"
    tifffile.imwrite(small, tifffile.imread(shared_data / EXAMPLEHUMAN[1])[:256, :300])
    paths = [shared_data / EXAMPLEHUMAN[0], small]
    with pytest.raises(DataError, match=r"D03f00d0\.tif is \(512, 512\) uint8 but .*d1_small\.tif is \(256, 300\)"):
        read_channel_files(paths)


def test_channel_file_with_several_channels_is_refused(shared_data: Path) -> None:
    with pytest.raises(DataError, match=r"cell_00000\.ome\.tif holds 3 channels"):
        read_channel_files([shared_data / EXAMPLEHUMAN[0], shared_data / JURKAT])


# -------------------------------------------------------------------------------------------- PNG / JPEG
def test_rgb_jpeg(shared_data: Path) -> None:
    path = first_jpeg(shared_data)
    image = read_image(path)
    reference = np.asarray(Image.open(path).convert("RGB"))
    assert image.array.shape == (3, *reference.shape[:2])
    assert image.array.dtype == np.uint8
    assert image.channel_names == ("red", "green", "blue")
    np.testing.assert_array_equal(image.array, reference.transpose(2, 0, 1))


def test_rgba_png_drops_alpha_unless_asked(shared_data: Path, tmp_path: Path) -> None:
    rgb = np.asarray(Image.open(first_jpeg(shared_data)))
    alpha = np.full(rgb.shape[:2], 7, dtype=np.uint8)
    path = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(path)
    dropped = read_image(path)
    assert dropped.array.shape[0] == 3
    np.testing.assert_array_equal(dropped.array, rgb.transpose(2, 0, 1))
    kept = read_image(path, keep_alpha=True)
    assert kept.channel_names == ("red", "green", "blue", "alpha")
    np.testing.assert_array_equal(kept.array[3], alpha)


def test_grey_png_8_and_16_bit(shared_data: Path, tmp_path: Path) -> None:
    plane16 = tifffile.imread(shared_data / BBBC021)[0]
    path16 = tmp_path / "dna16.png"
    Image.fromarray(plane16).save(path16)
    image16 = read_image(path16)
    assert image16.array.dtype == np.uint16
    assert image16.array.shape == (1, 68, 68)
    np.testing.assert_array_equal(image16.array[0], plane16)

    plane8 = tifffile.imread(shared_data / EXAMPLEHUMAN[0])
    path8 = tmp_path / "dna8.png"
    Image.fromarray(plane8).save(path8)
    image8 = read_image(path8)
    assert image8.array.dtype == np.uint8 and image8.channel_names is None
    np.testing.assert_array_equal(image8.array[0], plane8)


# ------------------------------------------------------------------------------------------------ tapes
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_tape_round_trip(shared_data: Path, tmp_path: Path, suffix: str) -> None:
    crop = tifffile.imread(shared_data / BBBC021)  # (3, 68, 68) uint16
    tape = np.concatenate(list(crop), axis=1)  # (68, 204): channels side by side
    assert tape.shape == (68, 204)
    path = tmp_path / f"tape{suffix}"
    if suffix == ".png":
        Image.fromarray(tape).save(path)
    else:
        tifffile.imwrite(path, tape)
    image = read_sample_image([path], channel_width=68)
    assert image.array.shape == (3, 68, 68)
    np.testing.assert_array_equal(image.array, crop)


def test_tape_width_must_be_a_multiple(shared_data: Path) -> None:
    tape = np.concatenate(list(tifffile.imread(shared_data / BBBC021)), axis=1)
    with pytest.raises(DataError, match="width 204 is not a multiple of channel_width 50"):
        split_tape(tape, 50, "tape.png")


def test_tape_must_be_grey(shared_data: Path) -> None:
    with pytest.raises(DataError, match="a channel tape must be a grey image, but this one has 3 channels"):
        read_sample_image([first_jpeg(shared_data)], channel_width=10)


# ------------------------------------------------------------------------------------------ bit depths
def test_scale_to_unit_by_hand() -> None:
    values8 = np.array([0, 51, 255], dtype=np.uint8)
    np.testing.assert_allclose(scale_to_unit(values8, "uint8"), [0.0, 0.2, 1.0], rtol=1e-6)
    np.testing.assert_allclose(scale_to_unit(values8, "dtype"), [0.0, 0.2, 1.0], rtol=1e-6)
    values16 = np.array([0, 819, 4095], dtype=np.uint16)
    np.testing.assert_allclose(scale_to_unit(values16, 12), [0.0, 0.2, 1.0], rtol=1e-6)
    np.testing.assert_allclose(scale_to_unit(values16, "12"), [0.0, 0.2, 1.0], rtol=1e-6)
    np.testing.assert_allclose(scale_to_unit(values16, "uint16"), [0.0, 819 / 65535, 4095 / 65535], rtol=1e-6)
    np.testing.assert_allclose(scale_to_unit(values16, "dtype"), [0.0, 819 / 65535, 4095 / 65535], rtol=1e-6)
    floats = np.array([-1.5, 0.25, 3.0], dtype=np.float64)
    out = scale_to_unit(floats, "float")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, floats.astype(np.float32))
    np.testing.assert_array_equal(scale_to_unit(floats, "dtype"), floats.astype(np.float32))
    # uint16 data whose values fit 8 bits may be declared uint8
    np.testing.assert_allclose(scale_to_unit(np.array([255], dtype=np.uint16), "uint8"), [1.0])


def test_scale_to_unit_refuses_values_above_the_declared_range(shared_data: Path) -> None:
    field = read_image(shared_data / BBBC022).array  # max 4095
    with pytest.raises(DataError, match=r"IXMtest.*values go up to 4095, above the declared bit depth uint8 "
                                        r"\(max 255\)\. Set data\.bit_depth to 12"):
        scale_to_unit(field, "uint8", source=str(shared_data / BBBC022))
    with pytest.raises(DataError, match=r"above the declared bit depth 10 bits \(max 1023\)"):
        scale_to_unit(field, 10)
    scaled = scale_to_unit(field, 12)
    assert float(scaled.max()) == 1.0


def test_scale_to_unit_other_refusals() -> None:
    with pytest.raises(DataError, match="bit_depth 'float' was declared but the file holds uint16 integers"):
        scale_to_unit(np.zeros(3, np.uint16), "float", source="x.tif")
    with pytest.raises(DataError, match=r"x\.tif: bit_depth 'dtype' has no range for int32 pixels"):
        scale_to_unit(np.zeros(3, np.int32), "dtype", source="x.tif")
    with pytest.raises(DataError, match="below 0"):
        scale_to_unit(np.array([-1.0, 0.5]), "uint8")


@pytest.mark.parametrize("bad", ["uint9", "12bit", "", 0, 33, True, 1.5])
def test_bad_bit_depth_declarations(bad: object) -> None:
    with pytest.raises(ValueError, match=re.escape(f"bit_depth {bad!r} is not valid")):
        parse_bit_depth(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ unreadable files
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"image file not found: .*nothing\.tif"):
        read_image(tmp_path / "nothing.tif")


def test_truncated_jpeg(shared_data: Path, tmp_path: Path) -> None:
    data = first_jpeg(shared_data).read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"could not decode image file .*truncated\.jpg: OSError"):
        read_image(path)


def test_garbage_tiff(tmp_path: Path) -> None:
    path = tmp_path / "garbage.tif"
    path.write_bytes(b"II*\x00this is not a tiff")
    with pytest.raises(DataError, match=r"could not decode TIFF file .*garbage\.tif"):
        read_image(path)


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "cells.czi"
    path.write_bytes(b"\x00")
    with pytest.raises(DataError, match=r"cells\.czi has an unsupported format '\.czi'; supported: \.tif"):
        read_image(path)
