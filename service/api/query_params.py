"""Unknown query parameters are refused (400), so a misspelt `modle=` or `topk=` cannot silently fall back
to a default model or value.

Generic: the accepted names are read from the matched route's own declaration (FastAPI's dependant tree),
so every route, present and future, is covered without listing any name here. Installed as an application
dependency in service/app.py.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.dependencies.models import Dependant
from pydantic import BaseModel

from service import errors

# An error message names at most this many unknown parameters: the query string is the client's to fill.
MAX_NAMES_REPORTED = 10


async def reject_unknown_query_parameters(request: Request) -> None:
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None:
        return
    accepted = accepted_query_parameters(dependant)
    unknown = sorted(set(request.query_params.keys()) - accepted)
    if unknown:
        named = [repr(name) for name in unknown[:MAX_NAMES_REPORTED]]
        raise errors.unknown_parameters(named, sorted(accepted))


# Per route, by the identity of its dependant (a dataclass compared by value, so not hashable); the
# dependant is kept in the value, so its id cannot be reused while the entry exists.
_ACCEPTED: dict[int, tuple[Dependant, frozenset[str]]] = {}


def accepted_query_parameters(dependant: Dependant) -> frozenset[str]:
    cached = _ACCEPTED.get(id(dependant))
    if cached is None:
        cached = _ACCEPTED[id(dependant)] = (dependant, _declared_query_parameters(dependant))
    return cached[1]


def _declared_query_parameters(dependant: Dependant) -> frozenset[str]:
    """Every query parameter name (its alias) a route and its dependencies declare."""
    names: set[str] = set()
    pending = [dependant]
    while pending:
        current = pending.pop()
        for field in current.query_params:
            names.update(_names_of(field))
        pending.extend(current.dependencies)
    return frozenset(names)


def _names_of(field: object) -> set[str]:
    # A pydantic model declared as Query(...) contributes its own fields, by alias.
    annotation = getattr(getattr(field, "field_info", None), "annotation", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {info.alias or name for name, info in annotation.model_fields.items()}
    return {getattr(field, "alias", None) or getattr(field, "name", "")}
