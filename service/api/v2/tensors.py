"""Tensors as the protocol carries them, independent of REST or gRPC: building numpy arrays from a
request's values or raw bytes, checking them, and Triton's length-prefixed encoding of BYTES elements."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.api.v2 import datatypes
from service.api.v2.errors import fail

# Each BYTES element is a 4-byte little-endian length, then that many bytes.
_LENGTH_PREFIX = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class InputTensor:
    """One decoded request input. `values` is an array of `shape` for fixed-size datatypes, or the flat list
    of elements for BYTES (which Stride reads as encoded images)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray | list[bytes]


@dataclass(frozen=True, slots=True)
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray

    @property
    def shape(self) -> list[int]:
        return list(self.array.shape)


def checked_shape(name: str, shape: Sequence[int]) -> tuple[int, ...]:
    if any(not isinstance(dim, int) or isinstance(dim, bool) or dim < 0 for dim in shape):
        fail(f"input '{name}' has shape {list(shape)}; every dimension must be a whole number, 0 or more")
    return tuple(shape)


def checked_datatype(name: str, datatype: str) -> str:
    if datatype not in datatypes.KNOWN:
        fail(f"input '{name}' has datatype '{datatype}'; known datatypes are {', '.join(datatypes.KNOWN)}")
    return datatype


def from_values(name: str, datatype: str, shape: tuple[int, ...], values: Any) -> InputTensor:
    """An input from JSON or protobuf typed values (flat or nested, row-major)."""
    if datatype == datatypes.BYTES:
        elements = [_as_bytes(name, element) for element in _flatten(values)]
        _check_count(name, shape, len(elements))
        return InputTensor(name, datatype, shape, elements)
    try:
        given = np.asarray(values)
    except (ValueError, TypeError):
        fail(f"input '{name}' data is not a regular array of numbers (ragged nested lists?)")
    if given.dtype.kind not in datatypes.accepted_kinds(datatype):
        fail(f"input '{name}' is {datatype} but its data holds {_kind_name(given.dtype)}")
    _check_count(name, shape, given.size)
    array = given.astype(datatypes.NUMPY_DTYPES[datatype]).reshape(shape)
    return InputTensor(name, datatype, shape, array)


def from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes | memoryview) -> InputTensor:
    """An input from raw little-endian bytes (gRPC raw_input_contents, REST binary data)."""
    if datatype == datatypes.BYTES:
        elements = split_bytes_elements(name, raw)
        _check_count(name, shape, len(elements))
        return InputTensor(name, datatype, shape, elements)
    dtype = datatypes.NUMPY_DTYPES[datatype]
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        fail(f"input '{name}' has {len(raw)} bytes of data; {datatype} {list(shape)} needs {expected}")
    return InputTensor(name, datatype, shape, np.frombuffer(raw, dtype=dtype).reshape(shape))


def split_bytes_elements(name: str, raw: bytes | memoryview) -> list[bytes]:
    view = memoryview(raw)
    elements: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + _LENGTH_PREFIX.size > len(view):
            fail(f"input '{name}' is truncated: a BYTES element length at byte {offset} is cut off")
        (length,) = _LENGTH_PREFIX.unpack_from(view, offset)
        offset += _LENGTH_PREFIX.size
        if offset + length > len(view):
            fail(f"input '{name}' is truncated: a BYTES element at byte {offset} declares {length} bytes, "
                 f"{len(view) - offset} remain")
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    return elements


def join_bytes_elements(elements: Iterable[bytes]) -> bytes:
    return b"".join(_LENGTH_PREFIX.pack(len(element)) + element for element in elements)


def raw_bytes(array: np.ndarray) -> bytes:
    """The row-major little-endian bytes of an output array (BYTES: length-prefixed elements)."""
    if array.dtype == object:
        return join_bytes_elements(array.ravel().tolist())
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def json_values(array: np.ndarray) -> list[Any]:
    """An output's values for a JSON answer, flat and row-major (BYTES elements as UTF-8 text)."""
    values = array.ravel().tolist()
    return [v.decode() for v in values] if array.dtype == object else values


def _check_count(name: str, shape: tuple[int, ...], count: int) -> None:
    if count != math.prod(shape):
        fail(f"input '{name}' has {count} values; shape {list(shape)} needs {math.prod(shape)}")


def _flatten(values: Any) -> Iterable[Any]:
    if isinstance(values, list | tuple):
        for value in values:
            yield from _flatten(value)
    else:
        yield values


def _as_bytes(name: str, element: Any) -> bytes:
    if isinstance(element, bytes):
        return element
    if isinstance(element, str):
        return element.encode()
    fail(f"input '{name}' is BYTES; each element must be a string, not {type(element).__name__}")


def _kind_name(dtype: np.dtype) -> str:
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "fractional numbers"}.get(
        dtype.kind, "non-numbers (strings or objects)")
