"""Protobuf messages of `inference.GRPCInferenceService` <-> the protocol-neutral tensors of service.api.v2.

Inputs come as raw_input_contents (what Triton's clients send) or as typed `contents`; outputs always leave
as raw_output_contents, as Triton answers. Runs in a worker thread.
"""

from __future__ import annotations

from service.api.v2 import datatypes
from service.api.v2.errors import fail, refuse_unsupported_parameters
from service.api.v2.schemas import ModelMetadataResponse, ServerMetadataResponse
from service.api.v2.tensors import (
    InputTensor,
    OutputTensor,
    checked_datatype,
    checked_shape,
    from_raw,
    from_values,
    raw_bytes,
)
from service.grpc import grpc_predict_v2_pb2 as pb

# The InferTensorContents field that carries each datatype; FP16 travels only as raw bytes.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    datatypes.BYTES: "bytes_contents",
}



def decode_inputs(request: pb.ModelInferRequest) -> list[InputTensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        fail(f"the request has {len(request.inputs)} inputs but {len(raw)} raw_input_contents; "
             "give one per input, in order")
    decoded = []
    for index, given in enumerate(request.inputs):
        refuse_unsupported_parameters(f"input '{given.name}'", given.parameters)
        datatype = checked_datatype(given.name, given.datatype)
        shape = checked_shape(given.name, list(given.shape))
        if raw:
            if given.HasField("contents"):
                fail(f"input '{given.name}' has contents, but the request uses raw_input_contents; use one")
            decoded.append(from_raw(given.name, datatype, shape, raw[index]))
        else:
            decoded.append(from_values(given.name, datatype, shape, _typed_contents(given, datatype)))
    return decoded


def _typed_contents(given: pb.ModelInferRequest.InferInputTensor, datatype: str) -> list:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        fail(f"input '{given.name}' is {datatype}, which travels only as raw_input_contents")
    return list(getattr(given.contents, field))


def requested_outputs(request: pb.ModelInferRequest) -> list[str] | None:
    for output in request.outputs:
        refuse_unsupported_parameters(f"output '{output.name}'", output.parameters)
    return [output.name for output in request.outputs] or None


def infer_response(request: pb.ModelInferRequest, model: str, version: str,
                   outputs: list[OutputTensor]) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request.id)
    for output in outputs:
        response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        response.raw_output_contents.append(raw_bytes(output.array))
    return response


def model_metadata_message(metadata: ModelMetadataResponse) -> pb.ModelMetadataResponse:
    message = pb.ModelMetadataResponse(name=metadata.name, versions=metadata.versions, platform=metadata.platform)
    for tensor in metadata.inputs:
        message.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    for tensor in metadata.outputs:
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    return message


def server_metadata_message(metadata: ServerMetadataResponse) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=metadata.name, version=metadata.version, extensions=metadata.extensions)
