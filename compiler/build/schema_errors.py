"""Turn pydantic validation errors into diagnostics that say what is wrong and what would be right."""
from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from gwc.compiler.build import models
from gwc.compiler.build.diagnostics import Diagnostic
from gwc.compiler.build.sources import Loc, SourceFile

_PATTERN_HINTS = {
    models.SERVER_NAME: "lowercase letters, digits and '-', 1 to 63 characters, not starting or "
                        "ending with '-'",
    models.TEAM_NAME: "lowercase letters, digits, '.', '_' and '-', 1 to 63 characters",
    models.TOOL_NAME: "letters, digits, '_', '-' and '.', 1 to 128 characters",
    models.RULE_ID: "letters, digits and ._:/#-, 1 to 128 characters",
    models.ENV_NAME: "an environment variable name such as CATALOG_TOKEN",
}


def _field(loc: Loc) -> str:
    names = [str(p) for p in loc if not isinstance(p, int) and "[" not in str(p)]
    return names[-1] if names else "document"


def _expected(ctx: dict[str, Any]) -> str:
    return str(ctx.get("expected", "")).replace("'", "")


def describe(error: dict[str, Any]) -> str:
    """One sentence for one pydantic error, in the registry's own words."""
    kind, loc, ctx = error["type"], error["loc"], error.get("ctx") or {}
    field, value = _field(loc), error.get("input")
    if kind == "missing":
        return f"missing required field '{field}'"
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(field, models.ALL_FIELD_NAMES, n=1)
        return f"unknown field '{field}'" + (f" (did you mean '{close[0]}'?)" if close else "")
    if kind == "literal_error":
        return f"unknown {field} {value!r} (expected {_expected(ctx)})"
    if kind == "union_tag_invalid":
        return f"unknown {field} {ctx.get('tag')!r} (expected {_expected(ctx)})"
    if kind == "string_pattern_mismatch":
        hint = _PATTERN_HINTS.get(ctx.get("pattern", ""), f"matching {ctx.get('pattern')}")
        return f"{field} {value!r} is not valid (expected {hint})"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        bound = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">",
                 "less_than": "<"}[kind]
        limit = next(iter(ctx.values()), "?")
        return f"{field} {value!r} is out of bounds (expected {bound} {limit})"
    if kind == "too_short":
        return f"{field} needs at least {ctx.get('min_length', 1)} item(s)"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    message = error["msg"]
    shown = f" (got {value!r})" if not isinstance(value, (dict, list)) else ""
    return f"{field}: {message[0].lower()}{message[1:]}{shown}"


def _key_error(kind: str) -> bool:
    return kind == "extra_forbidden"


def validate(source: SourceFile, model: type[BaseModel] | TypeAdapter, data: Any,
             prefix: Loc = ()) -> tuple[Any, list[Diagnostic]]:
    """Validate ``data`` (found at ``prefix`` inside ``source``) and return (value or None, diags)."""
    try:
        if isinstance(model, TypeAdapter):
            return model.validate_python(data), []
        return model.model_validate(data), []
    except ValidationError as exc:
        diags = [source.diag(prefix + tuple(e["loc"]), "schema", describe(e),  # type: ignore[arg-type]
                             key=_key_error(e["type"]))
                 for e in exc.errors(include_url=False)]
        return None, diags
