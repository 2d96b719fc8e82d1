"""/v1/collections: enrol images under ids, search by image, identify against a threshold.

A collection is built with one embedding model and remembers its name and file hash: adding to or searching
a collection with another model, or after that model's file changed, answers 409 (vectors of different
models cannot be compared). Ids are unique within a collection: adding an id again answers 409
`duplicate_id` unless `replace=true`. Store calls run off the event loop (service.collections.runner).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Query, Request, Response

from service import errors
from service.api.common import ERROR_RESPONSES, IMAGE_REQUEST_BODY, json_response
from service.api.context import request_id, tag_model
from service.api.encode import image_info
from service.api.inputs import read_image_sources
from service.api.params import ModelName
from service.collections import (
    CollectionExists,
    CollectionInfo,
    CollectionNotFound,
    Collections,
    CollectionSpec,
    DuplicateItem,
    Item,
    ItemNotFound,
    Match,
    StoreUnavailable,
)
from service.collections.store import MAX_ID_CHARS, NAME_PATTERN
from service.contract import Task
from service.engine import Answer
from service.families import EmbedQuery
from service.pipeline import StageTimes
from service.registry import ModelEntry
from service.results import Embeddings
from service.schemas import (
    CollectionCreated,
    CollectionList,
    Deleted,
    IdentifyResponse,
    ImageInfo,
    ItemAdded,
    MatchInfo,
    SearchResponse,
)
from service.schemas import CollectionInfo as CollectionInfoBody

router = APIRouter(prefix="/v1/collections", tags=["collections"])

MAX_METADATA_CHARS = 4096
COLLECTION_ERRORS = {
    **ERROR_RESPONSES,
    404: {"model": errors.ErrorResponse, "description": "unknown collection, item or model"},
    409: {"model": errors.ErrorResponse, "description": "the collection exists with another model, its model "
          "changed, another model was asked for, or the id is taken"},
    503: {"model": errors.ErrorResponse, "description": "the collections store is unavailable (reason given), "
          "or the model is not ready"},
}

CollectionName = Annotated[str, Path(description="letters, digits, '-' and '_', up to 64 characters")]
TopK = Annotated[int, Query(ge=1, le=1000, description="how many matches to return")]


# ------------------------------------------------------------------------------------------------ errors
def collection_not_found(name: str) -> errors.StrideError:
    return errors.StrideError(404, "collection_not_found", f"no collection named '{name}'; create it with "
                              f"PUT /v1/collections/{name}?model=M, or see GET /v1/collections")


def store_unavailable(reason: str) -> errors.StrideError:
    return errors.StrideError(503, "collections_unavailable", f"collections are unavailable: {reason}",
                              headers={"Retry-After": "5"})


def model_mismatch(spec: CollectionSpec, asked: str) -> errors.StrideError:
    return errors.StrideError(409, "model_mismatch", f"collection '{spec.name}' holds vectors of model "
                              f"'{spec.model}', not '{asked}': leave out model= or ask for '{spec.model}' "
                              "(vectors of different models cannot be compared)")


def model_changed(spec: CollectionSpec, now: str) -> errors.StrideError:
    return errors.StrideError(409, "model_changed", f"model '{spec.model}' changed since collection "
                              f"'{spec.name}' was built (file sha256 {spec.model_sha256[:12]}..., now {now[:12]}...): "
                              "its vectors no longer compare with new ones. Restore that model file, or rebuild "
                              f"the collection: DELETE /v1/collections/{spec.name}, PUT it again and re-add the items")


async def call(request: Request, fn: Any, *args: object) -> Any:
    """A store call off the loop, its failures as HTTP errors."""
    collections: Collections = request.app.state.collections
    try:
        return await collections.call(fn, *args)
    except StoreUnavailable as exc:
        raise store_unavailable(str(exc)) from exc
    except CollectionNotFound as exc:
        raise collection_not_found(str(exc)) from exc


def store(request: Request) -> Any:
    collections: Collections = request.app.state.collections
    if collections.store is None:
        raise store_unavailable(collections.reason or "the store is not open")
    return collections.store


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise errors.invalid_parameter("name", f"'{name}' is not a valid collection name: use letters, digits, "
                                       "'-' and '_' (starting with a letter or digit), up to 64 characters")
    return name


# ------------------------------------------------------------------------------------------ collections
@router.get("", response_model=CollectionList, responses=COLLECTION_ERRORS, summary="List collections with sizes")
async def list_collections(request: Request) -> CollectionList:
    found = await call(request, store(request).list)
    return CollectionList(backend=request.app.state.collections.backend, collections=[body(i) for i in found])


@router.put("/{name}", response_model=CollectionCreated, status_code=201, responses={
    **COLLECTION_ERRORS, 200: {"model": CollectionCreated, "description": "it already existed with this model"}},
            summary="Create a collection for an embedding model (idempotent for the same model)")
async def create_collection(request: Request, response: Response, name: CollectionName,
                            model: ModelName = None) -> CollectionCreated:
    check_name(name)
    entry = request.app.state.registry.resolve(model, Task.EMBEDDING)
    tag_model(request, entry.name)
    sha256 = await served_sha256(request, entry)
    spec = CollectionSpec(name=name, model=entry.name, model_sha256=sha256, dimension=embedding_dimension(entry))
    try:
        await call(request, store(request).create, spec)
        created = True
    except CollectionExists:
        existing = (await call(request, store(request).info, name)).spec
        if existing.model != spec.model:
            raise errors.StrideError(409, "collection_exists", f"collection '{name}' exists with model "
                                     f"'{existing.model}', not '{spec.model}': use another name, or DELETE it "
                                     "first (its items go with it)") from None
        if existing.model_sha256 != spec.model_sha256:
            raise model_changed(existing, spec.model_sha256) from None
        created = False
        response.status_code = 200
    info = await call(request, store(request).info, name)
    return CollectionCreated(**body(info).model_dump(), created=created)


@router.get("/{name}", response_model=CollectionInfoBody, responses=COLLECTION_ERRORS, summary="One collection")
async def get_collection(request: Request, name: CollectionName) -> CollectionInfoBody:
    return body(await call(request, store(request).info, check_name(name)))


@router.delete("/{name}", response_model=Deleted, responses=COLLECTION_ERRORS,
               summary="Delete a collection and its items")
async def delete_collection(request: Request, name: CollectionName) -> Deleted:
    await call(request, store(request).drop, check_name(name))
    return Deleted(collection=name)


# ------------------------------------------------------------------------------------------------ items
@router.post("/{name}/items", response_model=ItemAdded, status_code=201, responses={
    **COLLECTION_ERRORS, 200: {"model": ItemAdded, "description": "an item with this id was replaced (replace=true)"}},
             openapi_extra=IMAGE_REQUEST_BODY, summary="Add an image under an id (with a label and metadata)")
async def add_item(
    request: Request, name: CollectionName,
    id: Annotated[str, Query(min_length=1, max_length=MAX_ID_CHARS, description="your id for this image")],
    label: Annotated[str | None, Query(max_length=MAX_ID_CHARS, description="e.g. the person's name")] = None,
    metadata: Annotated[str | None, Query(description="your own JSON object, returned with matches")] = None,
    replace: Annotated[bool, Query(description="replace an item with the same id instead of answering 409")] = False,
    model: ModelName = None,
) -> Response:
    spec, entry = await collection_model(request, check_name(name), model)
    extra = parse_metadata(metadata)
    vectors, times, _ = await embed_request(request, entry, single=True)
    item = Item(id=id, label=label, metadata=extra)
    try:
        replaced = await call(request, store(request).add, name, item, vectors[0], replace)
    except DuplicateItem:
        raise errors.StrideError(409, "duplicate_id", f"collection '{name}' already has an item with id '{id}': "
                                 "add with replace=true to replace it, or DELETE "
                                 f"/v1/collections/{name}/items/{{id}} first") from None
    body_ = ItemAdded(collection=name, model=spec.model, request_id=request_id(request), id=id, label=label,
                      metadata=extra, replaced=replaced)
    response = json_response(request, entry.name, body_, times)
    response.status_code = 200 if replaced else 201
    return response


@router.delete("/{name}/items/{item_id}", response_model=Deleted, responses=COLLECTION_ERRORS,
               summary="Delete one item")
async def delete_item(request: Request, name: CollectionName, item_id: str) -> Deleted:
    try:
        await call(request, store(request).remove, check_name(name), item_id)
    except ItemNotFound:
        raise errors.StrideError(404, "item_not_found", f"collection '{name}' has no item with id "
                                 f"'{item_id}'") from None
    return Deleted(collection=name, id=item_id)


# ------------------------------------------------------------------------------------------ search, identify
@router.post("/{name}/search", response_model=SearchResponse | list[SearchResponse], responses=COLLECTION_ERRORS,
             openapi_extra=IMAGE_REQUEST_BODY, summary="The items most similar to an image, best first")
async def search(request: Request, name: CollectionName, top_k: TopK = 5, model: ModelName = None) -> Response:
    spec, entry = await collection_model(request, check_name(name), model)
    vectors, times, images = await embed_request(request, entry, single=False)
    answers = []
    for vector, image in zip(vectors, images, strict=True):
        matches = await call(request, store(request).search, name, vector, top_k)
        answers.append(SearchResponse(collection=name, model=spec.model, request_id=request_id(request),
                                      image=image, matches=[match_body(m) for m in matches]))
    return json_response(request, entry.name, answers[0] if len(answers) == 1 else answers, times)


@router.post("/{name}/identify", response_model=IdentifyResponse | list[IdentifyResponse],
             responses=COLLECTION_ERRORS, openapi_extra=IMAGE_REQUEST_BODY,
             summary="The enrolled identity an image shows, or null (unknown)")
async def identify(request: Request, name: CollectionName, model: ModelName = None,
                   threshold: Annotated[float | None, Query(ge=-1.0, le=1.0, description=(
                       "cosine similarity a match must exceed; default: the model's own threshold at 1% false "
                       "accepts (its card, `embedding.threshold` in /v1/models)"))] = None) -> Response:
    spec, entry = await collection_model(request, check_name(name), model)
    chosen = threshold if threshold is not None else default_threshold(entry)
    vectors, times, images = await embed_request(request, entry, single=False)
    answers = []
    for vector, image in zip(vectors, images, strict=True):
        best = await call(request, store(request).search, name, vector, 1)
        match = match_body(best[0]) if best and best[0].score > chosen else None
        answers.append(IdentifyResponse(collection=name, model=spec.model, request_id=request_id(request),
                                        image=image, threshold=chosen, match=match))
    return json_response(request, entry.name, answers[0] if len(answers) == 1 else answers, times)


# ------------------------------------------------------------------------------------------------ helpers
async def collection_model(request: Request, name: str, asked: str | None) -> tuple[CollectionSpec, ModelEntry]:
    """The collection and its model's entry; 409 when another model is asked for or the file changed."""
    spec = (await call(request, store(request).info, name)).spec
    if asked is not None and asked != spec.model:
        raise model_mismatch(spec, asked)
    entry = request.app.state.registry.resolve(spec.model, Task.EMBEDDING)
    tag_model(request, entry.name)
    now = await served_sha256(request, entry)
    if now != spec.model_sha256:
        raise model_changed(spec, now)
    return spec, entry


async def served_sha256(request: Request, entry: ModelEntry) -> str:
    """The SHA-256 of the model version that serves: the registry's record of the file it loaded when it
    keeps one (a file replaced on disk but not yet reloaded still serves the old vectors), else the file's."""
    recorded = getattr(entry, "sha256", None)
    return recorded or await request.app.state.collections.model_sha256(entry.path)


async def embed_request(request: Request, entry: ModelEntry,
                        single: bool) -> tuple[list[np.ndarray], StageTimes, list[ImageInfo]]:
    """The unit vectors of the request's images (one when `single`), their stage times and image facts."""
    sources = await read_image_sources(request, 1 if single else request.app.state.settings.max_images_per_request)
    answers, times = await request.app.state.engine.infer(entry, sources, EmbedQuery(), unit_vector)
    return [v for v, _ in answers], times, [i for _, i in answers]


def unit_vector(answer: Answer) -> tuple[np.ndarray, ImageInfo]:
    assert isinstance(answer.result, Embeddings)
    return answer.result.unit()[0], image_info(answer)


def embedding_dimension(entry: ModelEntry) -> int:
    """The vector length, from the graph's output shape (the contract does not state it)."""
    meta = entry.ready_model.metadata
    output = meta.outputs[meta.output("embedding")].name
    assert entry.session is not None
    for spec in entry.session.session.get_outputs():
        if spec.name == output and isinstance(spec.shape[-1], int):
            return int(spec.shape[-1])
    raise errors.StrideError(422, "unknown_dimension", f"model '{entry.name}' does not state its vector length "
                             "in the graph's output shape; collections need a fixed length")


def default_threshold(entry: ModelEntry) -> float:
    spec = entry.ready_model.metadata.embedding
    if spec is None or spec.threshold is None:
        raise errors.invalid_parameter("threshold", f"model '{entry.name}' states no threshold "
                                       "(embedding.threshold in its contract): pass threshold=")
    return spec.threshold


def parse_metadata(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    if len(raw) > MAX_METADATA_CHARS:
        raise errors.invalid_parameter("metadata", f"at most {MAX_METADATA_CHARS} characters of JSON")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise errors.invalid_parameter("metadata", f"not valid JSON ({exc.msg}); send a JSON object, "
                                       'e.g. metadata={"team":"blue"}') from exc
    if not isinstance(value, dict):
        raise errors.invalid_parameter("metadata", "must be a JSON object, e.g. {\"team\": \"blue\"}")
    return value


def body(info: CollectionInfo) -> CollectionInfoBody:
    s = info.spec
    return CollectionInfoBody(name=s.name, model=s.model, model_sha256=s.model_sha256, dimension=s.dimension,
                              size=info.size)


def match_body(match: Match) -> MatchInfo:
    return MatchInfo(id=match.item.id, label=match.item.label, score=match.score, metadata=match.item.metadata)
