"""REST bodies of the protocol: JSON tensors, and Triton's binary tensor data extension.

Binary requests carry the JSON header first, its length in the `Inference-Header-Content-Length` header,
then the raw bytes of every input whose parameters say `binary_data_size`, in input order. An output is
answered as binary when its parameters say `binary_data: true`, or when the request's parameters say
`binary_data_output: true` and the output does not say otherwise. Everything here runs in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from service.api.v2.errors import fail, refuse_unsupported_parameters
from service.api.v2.schemas import (
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestInput,
    RequestOutput,
    ResponseOutput,
)
from service.api.v2.tensors import (
    InputTensor,
    OutputTensor,
    checked_datatype,
    checked_shape,
    from_raw,
    from_values,
    json_values,
)
from service.api.v2.tensors import raw_bytes as tensor_bytes

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"



@dataclass(frozen=True, slots=True)
class DecodedRequest:
    id: str | None
    inputs: list[InputTensor]
    requested: list[str] | None  # output names, None for all
    binary_outputs: dict[str, bool]  # per requested output name
    binary_by_default: bool


@dataclass(frozen=True, slots=True)
class EncodedResponse:
    body: bytes
    header_length: int | None  # set when binary data follows the JSON
    content_type: str


def decode_request(body: bytes, header_length: str | None) -> DecodedRequest:
    header, binary = split_body(body, header_length)
    try:
        request = InferenceRequest.model_validate_json(header)
    except ValidationError as exc:
        fail(f"the inference request is not valid: {_describe(exc)}")
    inputs = _decode_inputs(request.inputs, binary)
    outputs = request.outputs
    for output in outputs or []:
        refuse_unsupported_parameters(f"output '{output.name}'", output.parameters)
    return DecodedRequest(
        id=request.id,
        inputs=inputs,
        requested=[o.name for o in outputs] if outputs else None,
        binary_outputs={o.name: flag for o in outputs or [] if (flag := _binary_flag(o)) is not None},
        binary_by_default=_bool_parameter(request.parameters, "binary_data_output"),
    )


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """(JSON header, binary tail) as the `Inference-Header-Content-Length` header says."""
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    if not (text.isascii() and text.isdigit()):
        fail(f"{HEADER_LENGTH} '{header_length}' is not a byte count")
    length = int(text)
    if length > len(body):
        fail(f"{HEADER_LENGTH} is {length} but the body has only {len(body)} bytes")
    view = memoryview(body)
    return body[:length], view[length:]


def _decode_inputs(inputs: list[RequestInput], binary: memoryview) -> list[InputTensor]:
    decoded, offset = [], 0
    for given in inputs:
        refuse_unsupported_parameters(f"input '{given.name}'", given.parameters)
        datatype = checked_datatype(given.name, given.datatype)
        shape = checked_shape(given.name, given.shape)
        size = _binary_size(given)
        if size is None:
            if given.data is None:
                fail(f"input '{given.name}' has no data: give 'data', or binary data with "
                     f"parameters.binary_data_size and the {HEADER_LENGTH} header")
            decoded.append(from_values(given.name, datatype, shape, given.data))
            continue
        if given.data is not None:
            fail(f"input '{given.name}' has both 'data' and binary_data_size; send one")
        if offset + size > len(binary):
            fail(f"the binary data is truncated: input '{given.name}' declares {size} bytes at offset {offset} "
                 f"of the binary part, which has {len(binary)} bytes"
                 + ("" if len(binary) else f" (is the {HEADER_LENGTH} header missing?)"))
        decoded.append(from_raw(given.name, datatype, shape, binary[offset : offset + size]))
        offset += size
    if offset != len(binary):
        fail(f"the body has {len(binary) - offset} bytes after the binary inputs that no input declares; "
             f"check {HEADER_LENGTH} and each binary_data_size")
    return decoded


def _binary_size(given: RequestInput) -> int | None:
    size = given.parameters.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        fail(f"input '{given.name}' parameter binary_data_size must be a byte count, not {size!r}")
    return size


def _binary_flag(output: RequestOutput) -> bool | None:
    if "binary_data" not in output.parameters:
        return None
    return _bool_parameter(output.parameters, "binary_data", f"output '{output.name}' ")


def _bool_parameter(parameters: Parameters, name: str, where: str = "") -> bool:
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        fail(f"{where}parameter {name} must be true or false, not {value!r}")
    return value


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in error.get("loc", ()))
        problems.append(f"{location}: {error['msg']}" if location else error["msg"])
    return "; ".join(problems[:5])


def encode_response(model: str, version: str, request: DecodedRequest, outputs: list[OutputTensor]) -> EncodedResponse:
    entries: list[ResponseOutput] = []
    chunks: list[bytes] = []
    for output in outputs:
        if request.binary_outputs.get(output.name, request.binary_by_default):
            chunk = tensor_bytes(output.array)
            chunks.append(chunk)
            entries.append(ResponseOutput(name=output.name, datatype=output.datatype, shape=output.shape,
                                          parameters={"binary_data_size": len(chunk)}))
        else:
            entries.append(ResponseOutput(name=output.name, datatype=output.datatype, shape=output.shape,
                                          data=json_values(output.array)))
    header = InferenceResponse(model_name=model, model_version=version, id=request.id, outputs=entries)
    json_part = header.model_dump_json(exclude_none=True).encode()
    if not chunks:
        return EncodedResponse(json_part, None, JSON_CONTENT_TYPE)
    return EncodedResponse(json_part + b"".join(chunks), len(json_part), BINARY_CONTENT_TYPE)
