"""A stand-in for LiteLLM's key management API, checked against LiteLLM's own models.

The real proxy starts here but its key endpoints need a database whose engine cannot be
downloaded (REAL-COMPONENTS.md), so this serves /key/generate, /key/info, /key/update and
/key/delete. Every body is validated with the pydantic models from `litellm.proxy._types`, and
durations are parsed with LiteLLM's own parser, so a body LiteLLM would reject is rejected here
with LiteLLM's status and error shape. Stricter than LiteLLM on purpose: a field its model does
not know, which LiteLLM would silently drop (a budget that never applies), is a 422 here.
Keys are stored by their SHA-256, as LiteLLM stores them, and found by key or by that hash.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import secrets
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from tests.standins import Call, Reply, StandinServer

# Seconds the first `import litellm.proxy._types` took in this process (about 5 s on 2 cores).
IMPORT_SECONDS: float | None = None


@functools.cache
def litellm_models() -> SimpleNamespace:
    """LiteLLM's request/response models and duration parser, imported on first use: the import
    is slow, and without LITELLM_LOCAL_MODEL_COST_MAP it reaches for the network."""
    global IMPORT_SECONDS
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    # Importing litellm quiets other libraries' loggers (httpx to WARNING); the tests read those.
    levels = {name: logger.level for name, logger in logging.root.manager.loggerDict.items()
              if isinstance(logger, logging.Logger)}
    levels.setdefault("httpx", logging.NOTSET)
    started = time.monotonic()
    from importlib.metadata import version

    from litellm.litellm_core_utils.duration_parser import duration_in_seconds
    from litellm.proxy._types import GenerateKeyRequest, GenerateKeyResponse, KeyRequest, UpdateKeyRequest

    IMPORT_SECONDS = time.monotonic() - started
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    return SimpleNamespace(GenerateKeyRequest=GenerateKeyRequest, GenerateKeyResponse=GenerateKeyResponse,
                           UpdateKeyRequest=UpdateKeyRequest, KeyRequest=KeyRequest,
                           duration_in_seconds=duration_in_seconds, version=version("litellm"))


def hash_token(key: str) -> str:
    """`litellm.proxy.utils.hash_token` (that module needs the proxy extras)."""
    return hashlib.sha256(key.encode()).hexdigest()


def _token_id(key_or_hash: str) -> str:
    # LiteLLM's `_hash_token_if_needed`: an "sk-" key is hashed, anything else is taken as a hash.
    return hash_token(key_or_hash) if key_or_hash.startswith("sk-") else key_or_hash


def proxy_error(status: int, message: str, type_: str = "bad_request_error", param: str | None = None) -> Reply:
    """The body LiteLLM's ProxyException handler sends."""
    return Reply(status, {"error": {"message": message, "type": type_, "param": str(param),
                                    "code": str(status)}})


def http_exception(status: int, detail: Any) -> Reply:
    """An HTTPException raised inside a key endpoint, as `handle_exception_on_proxy` rewraps it."""
    return proxy_error(status, str(detail), "internal_server_error", "None")


def validation_error(errors: list[dict[str, Any]]) -> Reply:
    """FastAPI's 422 for a body the endpoint's pydantic model refused."""
    return Reply(422, {"detail": errors})


class LiteLLMStandin(StandinServer):
    def __init__(self, master_key: str = "sk-master-" + secrets.token_urlsafe(16)) -> None:
        super().__init__()
        self.master_key = master_key
        self.keys: dict[str, dict[str, Any]] = {}  # token id -> the stored key row (never the raw key)
        self.models = litellm_models()
        # LiteLLM's clock, for expiries: a test that moves the processor's clock moves this one too.
        self.clock: Any = lambda: datetime.now(UTC)

    def reset(self) -> None:
        with self._lock:
            self.keys.clear()
        self.clock = lambda: datetime.now(UTC)
        self.reset_calls()

    def key_by_alias(self, alias: str) -> dict[str, Any] | None:
        with self._lock:
            return next((row for row in self.keys.values() if row["key_alias"] == alias), None)

    def serve(self, call: Call) -> Reply:
        if call.headers.get("authorization") != f"Bearer {self.master_key}":
            return proxy_error(401, "Authentication Error, Invalid proxy server token passed. "
                                    "Unable to find token in cache or `LiteLLM_VerificationTokenTable`",
                               "auth_error", "None")
        route = {("POST", "/key/generate"): self._generate, ("GET", "/key/info"): self._info,
                 ("POST", "/key/update"): self._update, ("POST", "/key/delete"): self._delete}.get(
            (call.method, call.path))
        if route is None:
            return Reply(404, {"detail": "Not Found"})
        with self._lock:
            return route(call)

    # --- validation with LiteLLM's models -------------------------------------------------------------

    def _validated(self, model: Any, body: Any) -> tuple[Any, Reply | None]:
        from pydantic import ValidationError

        if not isinstance(body, dict):
            return None, validation_error([{"type": "model_attributes_type", "loc": ["body"],
                                            "msg": "Input should be a valid dictionary or object", "input": body}])
        known = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
        unknown = sorted(set(body) - known)
        if unknown:
            return None, validation_error([
                {"type": "extra_forbidden", "loc": ["body", name], "input": body[name],
                 "msg": f"Extra inputs are not permitted: LiteLLM {self.models.version} "
                        f"{model.__name__} has no field {name!r} and would ignore it"} for name in unknown])
        try:
            return model.model_validate(body), None
        except ValidationError as exc:
            return None, validation_error([
                {"type": e["type"], "loc": ["body", *e["loc"]], "msg": e["msg"], "input": e.get("input")}
                for e in exc.errors()])

    def _expiry(self, duration: str | None) -> datetime | None:
        if duration is None or duration == "-1":
            return None
        return self.clock() + timedelta(seconds=self.models.duration_in_seconds(duration))

    # --- endpoints -----------------------------------------------------------------------------------

    def _generate(self, call: Call) -> Reply:
        data, refused = self._validated(self.models.GenerateKeyRequest, call.body)
        if refused:
            return refused
        for name in ("max_budget", "soft_budget"):
            value = getattr(data, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                return http_exception(400, {"error": f"{name} must be a non-negative finite number. Received: {value}"})
        if data.key_alias is not None and any(row["key_alias"] == data.key_alias for row in self.keys.values()):
            return proxy_error(400, f"Key with alias '{data.key_alias}' already exists. "
                                    "Unique key aliases across all keys are required.", param="key_alias")
        if data.key is not None and not data.key.startswith("sk-"):
            return http_exception(400, {"error": "Invalid key format. LiteLLM Virtual Key must start with 'sk-'."})
        if data.key is not None and len(data.key) < 16:
            return http_exception(400, {"error": "Invalid key format. LiteLLM Virtual Key must be at least "
                                                 "16 characters long."})
        key = data.key or "sk-" + secrets.token_urlsafe(16)
        token = hash_token(key)
        if token in self.keys:
            # The database's unique index on the token; LiteLLM surfaces it as a 500.
            return http_exception(500, "Unique constraint failed on the fields: (`token`)")
        try:
            expires = self._expiry(data.duration)
            if data.budget_duration:
                self.models.duration_in_seconds(data.budget_duration)
        except ValueError as exc:  # LiteLLM lets its parser's error through as a 500
            return http_exception(500, exc)
        now = datetime.now(UTC).isoformat()
        row = data.model_dump(mode="json", exclude={"key"})
        row.update(token=token, expires=expires and expires.isoformat(), created_at=now, updated_at=now, spend=0.0,
                   key_name=f"sk-...{key[-4:]}")
        self.keys[token] = row
        answer = self.models.GenerateKeyResponse.model_validate({**row, "key": key, "token_id": token})
        return Reply(200, answer.model_dump(mode="json"))

    def _info(self, call: Call) -> Reply:
        key = call.query.get("key")
        if not key:
            return proxy_error(400, "No key passed in.", param="key")
        row = self.keys.get(_token_id(key))
        if row is None:
            return proxy_error(404, "Key not found in database", "not_found_error", "key")
        info = {k: v for k, v in row.items() if k != "token"}
        return Reply(200, {"key": key, "info": info})

    def _update(self, call: Call) -> Reply:
        data, refused = self._validated(self.models.UpdateKeyRequest, call.body)
        if refused:
            return refused
        if not data.key:
            return http_exception(400, {"error": "key is required"})
        token = _token_id(data.key)
        row = self.keys.get(token)
        if row is None:
            return http_exception(404, {"error": "Key not found"})
        changes = data.model_dump(mode="json", exclude={"key"}, exclude_unset=True)
        if changes.get("key_alias") and any(
                r["key_alias"] == changes["key_alias"] and t != token for t, r in self.keys.items()):
            return proxy_error(400, f"Key with alias '{changes['key_alias']}' already exists. "
                                    "Unique key aliases across all keys are required.", param="key_alias")
        if "duration" in changes:
            try:
                expires = self._expiry(changes.pop("duration"))
                changes["expires"] = expires and expires.isoformat()
            except ValueError as exc:
                return http_exception(500, exc)
        row.update(changes, updated_at=datetime.now(UTC).isoformat())
        return Reply(200, {k: v for k, v in row.items() if k != "token"})

    def _delete(self, call: Call) -> Reply:
        data, refused = self._validated(self.models.KeyRequest, call.body)
        if refused:
            return refused
        if data.keys:
            tokens = [_token_id(k) for k in data.keys]
        else:
            tokens = [t for t, row in self.keys.items() if row["key_alias"] in (data.key_aliases or [])]
        found = [t for t in tokens if t in self.keys]
        if not found:
            return http_exception(404, {"error": "No keys found"})
        for token in found:
            del self.keys[token]
        return Reply(200, {"deleted_keys": data.keys or data.key_aliases})
