"""Image readers for the layouts found in cell microscopy.

Every reader returns an :class:`ImageData`: a numpy array ``(C, H, W)`` in the file's own dtype (no
scaling; see :func:`~cellssl.data.bitdepth.scale_to_unit`) and the channel names the file carries, if any.

Layouts:

- TIFF (:func:`read_tiff`): single page, multi-page, ImageJ hyperstacks and OME-TIFF. Axes of size 1 are
  dropped; the one remaining non-spatial axis (C, S, I, Q, Z or T) becomes the channel axis. OME-XML
  channel names are returned. Photometric RGB in a TIFF is not taken to mean red/green/blue (microscopy
  files often store three stains that way).
- PNG / JPEG / BMP (:func:`read_pil`): grey -> ``(1, H, W)``; RGB -> ``(3, H, W)`` named
  ``red, green, blue``; RGBA -> alpha dropped unless ``keep_alpha``; 16-bit PNG stays uint16.
- one file per channel (:func:`read_channel_files`): single-channel files stacked in the given order.
- channel tapes (:func:`split_tape`): a grey image ``(H, W * C)`` with channels side by side.

:func:`read_sample_image` picks the layout for one table row. Missing, unreadable and corrupt files raise
:class:`~cellssl.errors.DataError` naming the file; callers add the table row.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellssl.data.bitdepth import BitDepth, parse_bit_depth, scale_to_unit
from cellssl.errors import DataError

__all__ = [
    "PIL_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "TIFF_SUFFIXES",
    "BitDepth",
    "ImageData",
    "parse_bit_depth",
    "read_channel_files",
    "read_image",
    "read_pil",
    "read_sample_image",
    "read_tiff",
    "scale_to_unit",
    "split_tape",
]

TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")
PIL_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")
SUPPORTED_SUFFIXES: tuple[str, ...] = TIFF_SUFFIXES + PIL_SUFFIXES

_SPATIAL_AXES = ("Y", "X")


@dataclass
class ImageData:
    """An image as read from disk.

    :ivar array: ``(C, H, W)`` numpy array in the file's dtype.
    :ivar channel_names: names stored in the file (OME-XML, or red/green/blue for RGB PNG/JPEG), one per
        channel, as written there (not canonicalised); ``None`` when the file carries none.
    :ivar source: the file (or files, joined by ``", "``) the image comes from, for messages.
    """

    array: np.ndarray
    channel_names: tuple[str, ...] | None
    source: str

    @property
    def num_channels(self) -> int:
        """``C``."""
        return int(self.array.shape[0])


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise DataError(f"image file not found: {path}")
    if not path.is_file():
        raise DataError(f"image path is not a file: {path}")


def _ome_channel_names(xml_text: str | None, num_channels: int) -> tuple[str, ...] | None:
    """Channel names of the first OME ``Image``, if every channel has one and their count matches."""
    if not xml_text:
        return None
    try:
        root = ElementTree.fromstring(xml_text)
    except ElementTree.ParseError:
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] != "Pixels":
            continue
        names = [
            child.get("Name") for child in element if child.tag.rsplit("}", 1)[-1] == "Channel"
        ]
        if len(names) == num_channels and all(names):
            return tuple(str(name) for name in names)
        return None
    return None


def read_tiff(path: str | Path) -> ImageData:
    """Read a TIFF, multi-page TIFF, ImageJ hyperstack or OME-TIFF as ``(C, H, W)``.

    The first series is read. Axes of length 1 are squeezed; at most one non-spatial axis may remain and
    it becomes the channel axis (a single plane gives ``C = 1``).

    :raises DataError: naming the file if it is missing, cannot be decoded, or has more than one
        non-spatial axis left (for example Z stacks of several channels: project or select planes first).
    """
    import tifffile

    path = Path(path)
    _check_exists(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            array = series.asarray()
            ome_xml = tif.ome_metadata if tif.is_ome else None
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types (TiffFileError, ValueError, struct.error, ...)
        raise DataError(f"could not decode TIFF file {path}: {type(exc).__name__}: {exc}") from exc
    if len(axes) != array.ndim:
        axes = "Q" * (array.ndim - 2) + "YX"
    if "Y" not in axes or "X" not in axes:
        raise DataError(f"TIFF file {path} has axes {axes!r} and shape {array.shape}; expected Y and X axes")
    kept = [i for i, axis in enumerate(axes) if axis in _SPATIAL_AXES or array.shape[i] != 1]
    array = array.reshape([array.shape[i] for i in kept])
    axes = "".join(axes[i] for i in kept)
    extra = [i for i, axis in enumerate(axes) if axis not in _SPATIAL_AXES]
    if len(extra) > 1:
        raise DataError(
            f"TIFF file {path} has axes {axes!r} with shape {array.shape}: more than one non-spatial axis. "
            "cellssl reads 2-D images with channels (C, H, W); select or project Z planes / time points first."
        )
    if not extra:
        array = array[np.newaxis]
    else:
        order = [extra[0], axes.index("Y"), axes.index("X")]
        array = np.ascontiguousarray(array.transpose(order))
    return ImageData(array, _ome_channel_names(ome_xml, array.shape[0]), str(path))


def read_pil(path: str | Path, keep_alpha: bool = False) -> ImageData:
    """Read a PNG, JPEG or BMP with Pillow as ``(C, H, W)``.

    Grey (``L``, ``I;16``, ``I``, ``F``, ``1``) -> ``C = 1``; ``LA`` -> grey (alpha dropped unless
    ``keep_alpha``); ``RGB`` -> ``red, green, blue``; ``RGBA`` -> alpha dropped unless ``keep_alpha``;
    palette images are expanded to RGB(A). 16-bit PNGs are returned as uint16.

    :raises DataError: naming the file if it is missing, truncated or not decodable.
    """
    from PIL import Image

    path = Path(path)
    _check_exists(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
                mode = image.mode
            elif mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "RGB", "RGBA"):
                image = image.convert("RGB")
                mode = "RGB"
            array = np.array(image)
    except DataError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise DataError(f"could not decode image file {path}: {type(exc).__name__}: {exc}") from exc
    names: tuple[str, ...] | None = None
    if mode.startswith("I;16"):
        array = array.astype(np.uint16, copy=False)
    elif mode == "I" and array.size and array.min() >= 0 and array.max() <= 65535:
        array = array.astype(np.uint16)  # PNG has at most 16 bits; Pillow widens them to int32
    if array.ndim == 2:
        array = array[np.newaxis]
    else:
        if mode in ("RGBA", "LA") and not keep_alpha:
            array = array[..., :-1]
        array = np.ascontiguousarray(array.transpose(2, 0, 1))
        if mode in ("RGB", "RGBA"):
            names = ("red", "green", "blue", "alpha")[: array.shape[0]]
    return ImageData(array, names, str(path))


def read_image(path: str | Path, keep_alpha: bool = False) -> ImageData:
    """Read one image file of any supported format as ``(C, H, W)``, dispatching on the suffix.

    :param keep_alpha: keep the alpha channel of RGBA / LA PNGs (used by layouts that store a fourth stain
        there); ignored for TIFF, whose samples are all kept.
    :raises DataError: naming the file if it is missing, of an unsupported format, or not decodable.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return read_tiff(path)
    if suffix in PIL_SUFFIXES:
        return read_pil(path, keep_alpha=keep_alpha)
    _check_exists(path)
    raise DataError(
        f"image file {path} has an unsupported format {suffix or '(no suffix)'!r}; supported: "
        f"{', '.join(SUPPORTED_SUFFIXES)}"
    )


def split_tape(array: np.ndarray, channel_width: int, source: str = "image") -> np.ndarray:
    """Cut a channel tape ``(H, W * C)`` (or ``(1, H, W * C)``) into ``(C, H, W)``.

    Channel ``c`` is the column block ``[c * W, (c + 1) * W)``.

    :raises DataError: naming ``source`` if the image has several channels, or if its width is not a
        multiple of ``channel_width``.
    """
    if channel_width < 1:
        raise ValueError(f"channel_width must be a positive integer, got {channel_width}")
    if array.ndim == 3:
        if array.shape[0] != 1:
            raise DataError(
                f"{source}: a channel tape must be a grey image, but this one has {array.shape[0]} channels "
                f"(shape {array.shape}); remove data.channel_width if the channels are stored as planes"
            )
        array = array[0]
    height, width = array.shape
    if width % channel_width:
        raise DataError(
            f"{source}: image width {width} is not a multiple of channel_width {channel_width} "
            f"(shape {array.shape}); check data.channel_width"
        )
    channels = width // channel_width
    return np.ascontiguousarray(array.reshape(height, channels, channel_width).transpose(1, 0, 2))


def read_channel_files(paths: Sequence[str | Path], keep_alpha: bool = False) -> ImageData:
    """Read one single-channel file per channel and stack them in the given order as ``(C, H, W)``.

    :raises DataError: if a file is missing or unreadable, holds more than one channel, or if the files
        disagree in shape or dtype (the message names the files).
    """
    if not paths:
        raise ValueError("read_channel_files needs at least one path")
    planes: list[np.ndarray] = []
    for path in paths:
        image = read_image(path, keep_alpha=keep_alpha)
        if image.num_channels != 1:
            raise DataError(
                f"{path} holds {image.num_channels} channels (shape {image.array.shape}); in the "
                "one-file-per-channel layout every file must be a single grey plane"
            )
        planes.append(image.array[0])
    first = planes[0]
    for path, plane in zip(paths[1:], planes[1:]):
        if plane.shape != first.shape or plane.dtype != first.dtype:
            raise DataError(
                f"channel files disagree: {paths[0]} is {first.shape} {first.dtype} but {path} is "
                f"{plane.shape} {plane.dtype}; all channels of one image must have the same shape and dtype"
            )
    return ImageData(np.stack(planes), None, ", ".join(str(p) for p in paths))


def read_sample_image(
    paths: Sequence[str | Path], channel_width: int | None = None, keep_alpha: bool = False
) -> ImageData:
    """Read the image of one sample in whichever layout its paths describe.

    :param paths: one path (a multi-channel file, or a tape when ``channel_width`` is set) or one path per
        channel.
    :param channel_width: width ``W`` of one channel in a tape; ``None`` for other layouts.
    :raises DataError: from the readers, or if a tape is combined with several files.
    """
    if len(paths) == 1:
        image = read_image(paths[0], keep_alpha=keep_alpha)
        if channel_width is None:
            return image
        return ImageData(split_tape(image.array, channel_width, image.source), None, image.source)
    if channel_width is not None:
        raise DataError(
            f"channel tapes are single files, but {len(paths)} files were given for one image "
            f"({', '.join(str(p) for p in paths)}); use either channel_width or one file per channel"
        )
    return read_channel_files(paths, keep_alpha=keep_alpha)
