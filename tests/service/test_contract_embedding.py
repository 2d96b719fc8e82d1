"""The contract's embedding task: what an embedding model must state, and what only it may leave out."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.contract import EmbeddingSpec, ModelMetadata, OutputSpec, Task
from tests.service.embedding_models import COLOUR_SPEC

EMBEDDING_OUTPUT = OutputSpec(name="embedding", layout="batch,dimension", kind="embedding")
LOGITS = OutputSpec(name="logits", layout="batch,class", kind="logits")


def metadata(**fields: object) -> ModelMetadata:
    base: dict[str, object] = dict(task=Task.EMBEDDING, input=COLOUR_SPEC, outputs=[EMBEDDING_OUTPUT],
                                   model_version="1", architecture="a", training_data="t")
    return ModelMetadata(**(base | fields))


@pytest.mark.parametrize(("fields", "problem"), [
    ({}, None),
    ({"labels": []}, None),
    ({"embedding": EmbeddingSpec(normalized=True, threshold=0.4)}, None),
    ({"outputs": [LOGITS]}, "needs outputs of kind ['embedding']"),
    ({"task": Task.CLASSIFICATION, "outputs": [LOGITS]}, "needs labels"),
    ({"task": Task.CLASSIFICATION, "outputs": [LOGITS], "labels": ["a"]}, None),
])
def test_embedding_models_need_an_embedding_output_and_no_labels(fields: dict, problem: str | None) -> None:
    if problem is None:
        metadata(**fields)
    else:
        with pytest.raises(ValidationError, match=problem.replace("[", r"\[").replace("]", r"\]")):
            metadata(**fields)


@pytest.mark.parametrize("threshold", [-1.5, 1.01])
def test_the_threshold_is_a_cosine_similarity(threshold: float) -> None:
    with pytest.raises(ValidationError):
        EmbeddingSpec(threshold=threshold)
