"""The protocol's tensor datatypes and their numpy and ONNX Runtime equivalents: the one table of them."""

from __future__ import annotations

import numpy as np

BYTES = "BYTES"  # variable-length byte strings; in Stride, encoded images

# Fixed-size datatypes. Little-endian, as the protocol's raw and binary encodings are.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}

_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": BYTES,
}

# Which JSON / protobuf number kinds (numpy dtype.kind) may fill a tensor of each datatype: no silent
# truncation of 0.7 to 0, no "1.5" strings.
_ACCEPTED_KINDS = {"BOOL": "b", "FP16": "biuf", "FP32": "biuf", "FP64": "biuf"}
_INTEGER_KINDS = "biu"

KNOWN = (*NUMPY_DTYPES, BYTES)


def from_onnx_runtime(ort_type: str) -> str:
    """'tensor(float)' -> 'FP32'."""
    try:
        return _ORT_TYPES[ort_type]
    except KeyError:
        raise ValueError(f"ONNX Runtime type {ort_type} has no Open Inference Protocol datatype") from None


def from_numpy(dtype: np.dtype) -> str:
    for name, known in NUMPY_DTYPES.items():
        if known == dtype:
            return name
    raise ValueError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")


def accepted_kinds(datatype: str) -> str:
    return _ACCEPTED_KINDS.get(datatype, _INTEGER_KINDS)
