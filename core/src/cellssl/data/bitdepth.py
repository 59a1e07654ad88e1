"""Explicit bit depths: turning raw pixel values into floats in ``[0, 1]``.

A dataset declares the bit depth of its images; cellssl never guesses it from the largest value it sees
or from a divisor. The accepted declarations are:

- ``"uint8"`` (values 0..255, divided by 255), ``"uint16"`` (0..65535, divided by 65535);
- an integer number of bits ``n`` between 1 and 32, as an int or a digit string (``12`` or ``"12"``:
  values 0..4095, divided by 4095), for 12- or 14-bit cameras stored in 16-bit files;
- ``"float"``: the file already holds floating-point intensities; they are kept as they are;
- ``"dtype"``: the range of the file's own dtype (uint8 -> /255, uint16 -> /65535, float kept as is,
  bool -> 0/1). Other integer dtypes (int32, uint32, ...) have no agreed range and need an explicit
  declaration.

Values outside the declared range raise :class:`~cellssl.errors.DataError` naming the file and suggesting
the bit depth that fits, instead of producing values above 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellssl.errors import DataError

BIT_DEPTH_NAMES: tuple[str, ...] = ("uint8", "uint16", "float", "dtype")


@dataclass(frozen=True)
class BitDepth:
    """A parsed bit-depth declaration.

    :ivar kind: ``"integer"`` (values ``0..max_value``), ``"float"`` or ``"dtype"``.
    :ivar max_value: the largest allowed value for ``kind == "integer"``, else ``None``.
    :ivar label: the declaration as the user wrote it (for messages).
    """

    kind: str
    max_value: int | None
    label: str


def parse_bit_depth(value: str | int) -> BitDepth:
    """Parse a bit-depth declaration (see the module docstring for the accepted values).

    :param value: ``"uint8"``, ``"uint16"``, ``"float"``, ``"dtype"``, or a number of bits (int or digit
        string) between 1 and 32.
    :raises ValueError: for anything else, listing the accepted values.
    """
    if isinstance(value, bool):  # bool is an int subclass; True is not a bit depth
        raise ValueError(_bad_bit_depth_message(value))
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "uint8":
            return BitDepth("integer", 255, "uint8")
        if text == "uint16":
            return BitDepth("integer", 65535, "uint16")
        if text in ("float", "dtype"):
            return BitDepth(text, None, text)
        if not text.isdigit():
            raise ValueError(_bad_bit_depth_message(value))
        value = int(text)
    if isinstance(value, (int, np.integer)):
        bits = int(value)
        if not 1 <= bits <= 32:
            raise ValueError(_bad_bit_depth_message(value))
        return BitDepth("integer", 2**bits - 1, f"{bits} bits")
    raise ValueError(_bad_bit_depth_message(value))


def _bad_bit_depth_message(value: object) -> str:
    return (
        f"bit_depth {value!r} is not valid: use 'uint8', 'uint16', 'float', 'dtype' (the file's own dtype "
        "range) or a number of bits between 1 and 32 such as 12"
    )


def suggest_bit_depth(max_value: float) -> str:
    """The smallest declaration that holds integer values up to ``max_value`` (for error messages)."""
    bits = max(1, int(np.ceil(max_value)).bit_length())
    if bits <= 8:
        return "'uint8' (or 8)"
    if bits <= 16:
        return f"{bits} (a {bits}-bit camera) or 'uint16'" if bits < 16 else "'uint16' (or 16)"
    return f"{bits}" if bits <= 32 else "'float'"


def scale_to_unit(array: np.ndarray, bit_depth: str | int | BitDepth, source: str = "image") -> np.ndarray:
    """Scale raw pixel values to float32 according to an explicit bit depth.

    :param array: the image as read from the file (any shape), in the file's dtype.
    :param bit_depth: a declaration accepted by :func:`parse_bit_depth`, or a parsed :class:`BitDepth`.
    :param source: the file the values come from, named in error messages.
    :return: a float32 array of the same shape: integer declarations land in ``[0, 1]``; ``"float"`` (and
        ``"dtype"`` on float data) keeps the values.
    :raises ValueError: if ``bit_depth`` is not a valid declaration.
    :raises DataError: naming ``source`` if values exceed the declared range (with the bit depth that
        would fit), if an integer image is declared ``"float"``, or if ``"dtype"`` is used on an integer
        dtype without an agreed range (int32, uint32, ...).
    """
    depth = bit_depth if isinstance(bit_depth, BitDepth) else parse_bit_depth(bit_depth)
    dtype = array.dtype
    if depth.kind == "dtype":
        if dtype == np.bool_:
            return array.astype(np.float32)
        if dtype == np.uint8:
            depth = BitDepth("integer", 255, "dtype (uint8)")
        elif dtype == np.uint16:
            depth = BitDepth("integer", 65535, "dtype (uint16)")
        elif np.issubdtype(dtype, np.floating):
            return array.astype(np.float32, copy=False)
        else:
            hint = f"; the values go up to {array.max()}" if array.size else ""
            raise DataError(
                f"{source}: bit_depth 'dtype' has no range for {dtype} pixels{hint}. Declare the bit depth "
                "explicitly (data.bit_depth: 'uint8', 'uint16', a number of bits such as 12, or 'float')."
            )
    if depth.kind == "float":
        if not (np.issubdtype(dtype, np.floating)):
            raise DataError(
                f"{source}: bit_depth 'float' was declared but the file holds {dtype} integers. Declare "
                "the integer range instead (data.bit_depth: 'uint8', 'uint16', a number of bits such as 12, "
                "or 'dtype')."
            )
        return array.astype(np.float32, copy=False)

    assert depth.max_value is not None  # kind == "integer"
    if array.size:
        low, high = array.min(), array.max()
        if np.issubdtype(dtype, np.floating) and not (np.isfinite(low) and np.isfinite(high)):
            raise DataError(f"{source}: the image holds NaN or infinite values; it cannot be scaled.")
        if high > depth.max_value:
            raise DataError(
                f"{source}: pixel values go up to {high}, above the declared bit depth {depth.label} "
                f"(max {depth.max_value}). Set data.bit_depth to {suggest_bit_depth(float(high))}."
            )
        if low < 0:
            raise DataError(
                f"{source}: pixel values go down to {low}, below 0, which an integer bit depth "
                f"({depth.label}) does not allow. Use bit_depth 'float' for signed data."
            )
    return (array.astype(np.float32) / np.float32(depth.max_value)).astype(np.float32, copy=False)
