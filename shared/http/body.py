"""Reading a JSON request body: content type, size, syntax, then the schema, in that order."""

from __future__ import annotations

import json
from typing import TypeVar

import azure.functions as func
from pydantic import BaseModel, ValidationError

from shared.http.responses import HttpError

MAX_BODY_BYTES = 16 * 1024
Model = TypeVar("Model", bound=BaseModel)


def read_json(req: func.HttpRequest, schema: type[Model], allow_empty: bool = False) -> Model:
    """The body validated by `schema`; with `allow_empty`, no body at all reads as `{}`."""
    if allow_empty and not (req.get_body() or b"").strip():
        return schema.model_validate({})
    content_type = (req.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise HttpError(415, "The body must be JSON: send Content-Type: application/json",
                        {"content_type": content_type or None})
    declared = req.headers.get("content-length")
    body = req.get_body() or b""
    if len(body) > MAX_BODY_BYTES or (declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES):
        raise HttpError(413, f"The body must be at most {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HttpError(400, f"The body is not valid JSON: {exc}") from None
    except RecursionError:  # e.g. 16,000 "[": the parser's stack, not a server error
        raise HttpError(400, "The body is not valid JSON: it nests too deeply") from None
    if not isinstance(data, dict):
        reason = f"must be a JSON object, not {type(data).__name__}"
        raise HttpError(422, f"Invalid request: (body): {reason}", [{"field": "(body)", "reason": reason}])
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        fields = [{"field": ".".join(str(p) for p in e["loc"]) or "(body)", "reason": e["msg"]}
                  for e in exc.errors()]
        summary = "; ".join(f"{f['field']}: {f['reason']}" for f in fields)
        raise HttpError(422, f"Invalid request: {summary}", fields) from None
