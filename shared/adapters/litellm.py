"""Issues and revokes LiteLLM virtual keys through the proxy's management API.

Idempotent without a database of our own: `prepare` chooses the key and derives the alias from
the request id, the processor records both before `issue`, and LiteLLM refuses a second key with
the same alias. So a retry after a crash either creates the key or meets our own key under that
alias; the recorded key is the live one either way.
Keys never appear in a URL, a message, a log line or a repr: /key/info, /key/update and
/key/delete are called with the key's SHA-256 (LiteLLM's own token id), and every message is scrubbed.

The token id is recorded as a reference (`litellm-key-token`, not secret) when the key is chosen,
so everything after delivery (revoke, renewal, rotation) works once the plain key is erased from
the Secret. Rotation is issue-new-then-delete-old (LiteLLM's /key/regenerate is a paid feature):
the next key is chosen and recorded (`litellm-next-...`), generated under the alias of the next
generation (`llm-key-request-<id>-g<N>`), and the current one is deleted after the grace.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from shared.adapters.http_retry import Retryable, parse_retry_after, with_retries
from shared.adapters.tls import ssl_context
from shared.config import CatalogModel
from shared.domain.request import KeyRequest, utcnow
from shared.services.ports import Credentials, PermanentError, TransientError

log = logging.getLogger(__name__)

SECRET_KEY = "litellm-api-key"
REF_ALIAS = "litellm-key-alias"
REF_EXPIRES = "litellm-key-expires"
REF_TOKEN = "litellm-key-token"  # LiteLLM's sha256 id of the key: what revoke, update and delete need
REF_GENERATION = "litellm-key-generation"  # 1 (absent) for the first key, +1 per rotation
# A rotation in progress: the next key (until its email is recorded) and what identifies it.
SECRET_NEXT_KEY = "litellm-next-api-key"
REF_NEXT_ALIAS = "litellm-next-key-alias"
REF_NEXT_TOKEN = "litellm-next-key-token"
REF_NEXT_GENERATION = "litellm-next-key-generation"
REF_NEXT_EXPIRES = "litellm-next-key-expires"
# What retire replaces; every other `litellm-` reference (the processor's own) is passed through.
_KEY_REFERENCES = (REF_ALIAS, REF_EXPIRES, REF_TOKEN, REF_GENERATION,
                   REF_NEXT_ALIAS, REF_NEXT_TOKEN, REF_NEXT_GENERATION, REF_NEXT_EXPIRES)

_LIMITS = ("duration", "max_budget", "budget_duration", "soft_budget", "tpm_limit", "rpm_limit")


def key_alias(request: KeyRequest, generation: int = 1) -> str:
    """The alias of the request's key of `generation` (the first has no suffix, as before rotation existed)."""
    base = f"llm-key-request-{request.id}"
    return base if generation <= 1 else f"{base}-g{generation}"


def token_id(key: str) -> str:
    """LiteLLM's id of a key (`hash_token`): what it stores, and accepts wherever a key is asked for."""
    return hashlib.sha256(key.encode()).hexdigest()


class LiteLLMProvisioner:
    backend = "litellm"

    def __init__(self, base_url: str, master_key: str, *, timeout_seconds: float = 10.0,
                 ca_bundle: Path | str | None = None, quick_retries: int = 2,
                 max_inline_wait: float = 5.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._base_url = base_url.rstrip("/")
        self._sleep = sleep
        self._clock = clock
        self._master_key = master_key
        self._timeout = timeout_seconds
        self._quick_retries = quick_retries
        self._max_inline_wait = max_inline_wait
        self._client = httpx.Client(
            base_url=self._base_url,
            headers={"Authorization": f"Bearer {master_key}"},
            timeout=httpx.Timeout(timeout_seconds),
            verify=ssl_context(ca_bundle),
        )

    def __repr__(self) -> str:
        return f"LiteLLMProvisioner(base_url={self._base_url!r})"

    def close(self) -> None:
        self._client.close()

    # --- the Provisioner protocol -------------------------------------------------------------------

    def prepare(self, request: KeyRequest, model: CatalogModel) -> Credentials:
        key = _new_key()
        return Credentials(secrets={SECRET_KEY: key},
                           references={REF_ALIAS: key_alias(request), REF_TOKEN: token_id(key)})

    def issue(self, request: KeyRequest, model: CatalogModel, prepared: Credentials) -> Credentials:
        key = prepared.secrets[SECRET_KEY]
        alias = prepared.references[REF_ALIAS]
        expires = self._generate(request, model, key, alias, self._generate_body(request, model, key, alias))
        references = {REF_ALIAS: alias, REF_TOKEN: token_id(key)}
        if expires:
            references[REF_EXPIRES] = _iso(expires)
        return Credentials(secrets={SECRET_KEY: key}, references=references)

    def revoke(self, request: KeyRequest, recorded: Credentials) -> None:
        """Deletes the current key and, during a rotation, the next one, by their token ids (the
        recorded key's own hash when the key is still there, else `litellm-key-token`). A key
        never recorded cannot have been issued: nothing to delete for it."""
        alias = recorded.references.get(REF_ALIAS, key_alias(request))
        targets = [(alias, _current_token(recorded)),
                   (recorded.references.get(REF_NEXT_ALIAS, "the next key"), _next_token(recorded))]
        if not any(token for _, token in targets):
            # Nothing was prepared, so nothing can have been issued under our key.
            log.info("LiteLLM key %s: no key recorded, nothing to revoke (request %s)", alias, request.id)
            return
        for name, token in targets:
            if token:
                self._delete(request, name, token)

    # --- the key's life ------------------------------------------------------------------------------

    def extend(self, request: KeyRequest, model: CatalogModel, recorded: Credentials) -> Credentials:
        """`/key/update` of the current key (by its token id) with the model's `duration`: LiteLLM
        counts it from the call, so a retry moves the expiry by the seconds between the tries, no
        more. A model whose keys do not expire (`duration: null`) makes the key never expire, and
        returns no expiry. A key LiteLLM no longer has is a PermanentError (renewal cannot bring it back)."""
        token = _current_token(recorded)
        alias = recorded.references.get(REF_ALIAS, key_alias(request))
        if not token:
            raise PermanentError(f"LiteLLM key {alias}: no key recorded for request {request.id}; nothing to renew")
        duration = model.provisioning.litellm.duration
        response = self._call("POST", "/key/update", "", json={"key": token, "duration": duration})
        if duration is None:
            log.info("LiteLLM key %s renewed without expiry (request %s)", alias, request.id)
            return Credentials()
        expires = _json(response).get("expires") or self._info(token, "").get("expires")
        if not expires:
            raise TransientError(f"LiteLLM POST /key/update of key {alias} answered without an expiry")
        log.info("LiteLLM key %s renewed until %s (request %s)", alias, _iso(expires), request.id)
        return Credentials(references={REF_EXPIRES: _iso(expires)})

    def prepare_rotation(self, request: KeyRequest, model: CatalogModel, recorded: Credentials) -> Credentials:
        generation = _generation(recorded) + 1
        key = _new_key()
        return Credentials(secrets={SECRET_NEXT_KEY: key},
                           references={REF_NEXT_ALIAS: key_alias(request, generation), REF_NEXT_TOKEN: token_id(key),
                                       REF_NEXT_GENERATION: str(generation)})

    def rotate(self, request: KeyRequest, model: CatalogModel, recorded: Credentials) -> Credentials:
        """`/key/generate` of the prepared next key under its alias, with what `issue` grants.
        Its lifetime is what is left of the current key's (`litellm-key-expires`), so a rotation
        never extends a key past what was approved (renewal does, through the rules); without a
        recorded expiry, the model's `duration`. Idempotent as `issue`: a repeated call meets our
        own key under the alias. Called again once the next key was erased from the Secret (its
        email recorded), it only checks the key is live and returns no secret."""
        alias = recorded.references.get(REF_NEXT_ALIAS)
        key = recorded.secrets.get(SECRET_NEXT_KEY)
        token = _next_token(recorded)
        if not alias or not token:
            raise PermanentError(f"LiteLLM: no next key prepared for request {request.id}; prepare_rotation first")
        references = {REF_NEXT_ALIAS: alias, REF_NEXT_TOKEN: token,
                      REF_NEXT_GENERATION: recorded.references.get(REF_NEXT_GENERATION)
                      or str(_generation(recorded) + 1)}
        if not key:
            info = self._info(token, "")
            if info.get("key_alias") != alias:
                raise PermanentError(f"LiteLLM key {alias}: the next key is neither recorded nor live; "
                                     "prepare the rotation again")
            if info.get("expires"):
                references[REF_NEXT_EXPIRES] = _iso(info["expires"])
            return Credentials(references=references)
        body = self._generate_body(request, model, key, alias)
        remaining = self._remaining(recorded)
        if remaining is not None:
            body["duration"] = f"{remaining}s"
        expires = self._generate(request, model, key, alias, body)
        if expires:
            references[REF_NEXT_EXPIRES] = _iso(expires)
        return Credentials(secrets={SECRET_NEXT_KEY: key}, references=references)

    def retire(self, request: KeyRequest, recorded: Credentials) -> Credentials:
        """`/key/delete` of the current key by its token id (404: already gone), then the next
        key's values as the current ones (alias, token, generation, expiry) and no secret: the
        new key was delivered and is erased like the first. Every other `litellm-` reference
        recorded (the processor's own) is passed through, so the result can replace them all."""
        alias = recorded.references.get(REF_NEXT_ALIAS)
        token = _next_token(recorded)
        if not alias or not token:
            raise PermanentError(f"LiteLLM: no rotation in progress for request {request.id}; nothing to retire")
        current = _current_token(recorded)
        if current and current != token:
            self._delete(request, recorded.references.get(REF_ALIAS, key_alias(request)), current)
        references = {k: v for k, v in recorded.references.items() if k not in _KEY_REFERENCES}
        references.update({REF_ALIAS: alias, REF_TOKEN: token,
                           REF_GENERATION: recorded.references.get(REF_NEXT_GENERATION)
                           or str(_generation(recorded) + 1)})
        if recorded.references.get(REF_NEXT_EXPIRES):
            references[REF_EXPIRES] = recorded.references[REF_NEXT_EXPIRES]
        log.info("LiteLLM key %s is now the only key of request %s", alias, request.id)
        return Credentials(references=references)

    # --- calls shared by the steps ---------------------------------------------------------------------

    def _generate(self, request: KeyRequest, model: CatalogModel, key: str, alias: str,
                  body: dict[str, Any]) -> Any:
        """`/key/generate`; a repeated alias held by our own key counts as done. Returns `expires`."""
        response = self._call("POST", "/key/generate", key, json=body, accept=(400,))
        if response.status_code == 400:
            message = self._error_message(response, key)
            if "already exists" not in message or alias not in message:
                raise PermanentError(f"LiteLLM refused key {alias}: {message}")
            # A retry after a crash (or a lost answer): the alias is taken; is it by our key?
            info = self._call("GET", "/key/info", key, params={"key": token_id(key)}, accept=(404,))
            if info.status_code == 404 or (_json(info).get("info") or {}).get("key_alias") != alias:
                raise PermanentError(f"LiteLLM key alias {alias} belongs to another key")
            log.info("LiteLLM key %s already issued (request %s)", alias, request.id)
            return (_json(info).get("info") or {}).get("expires")
        log.info("LiteLLM key %s issued for models %s (request %s)", alias, body["models"], request.id)
        return _json(response).get("expires")

    def _info(self, token: str, key: str) -> dict[str, Any]:
        """What LiteLLM stores about the key with this token id ({} if it has none)."""
        response = self._call("GET", "/key/info", key, params={"key": token}, accept=(404,))
        if response.status_code == 404:
            return {}
        return _json(response).get("info") or {}

    def _delete(self, request: KeyRequest, alias: str, token: str) -> None:
        response = self._call("POST", "/key/delete", "", json={"keys": [token]}, accept=(404,))
        outcome = "was already gone" if response.status_code == 404 else "deleted"
        log.info("LiteLLM key %s %s (request %s)", alias, outcome, request.id)

    def _remaining(self, recorded: Credentials) -> int | None:
        """Whole seconds the current key has left (None: no expiry recorded); a key that has
        expired is not rotated."""
        expires = recorded.references.get(REF_EXPIRES)
        if not expires:
            return None
        try:
            until = datetime.fromisoformat(expires)
        except ValueError:
            return None
        left = (until - self._clock()).total_seconds()
        if left <= 0:
            raise PermanentError(f"LiteLLM key {recorded.references.get(REF_ALIAS, '')} expired at {expires}: "
                                 "renew it instead of rotating")
        return math.ceil(left)

    # --- HTTP ---------------------------------------------------------------------------------------------

    @staticmethod
    def _generate_body(request: KeyRequest, model: CatalogModel, key: str, alias: str) -> dict[str, Any]:
        grant = model.provisioning.litellm
        metadata: dict[str, Any] = {"request_id": request.id, "email": request.email, "requested_model": model.id}
        body: dict[str, Any] = {"key": key, "key_alias": alias, "models": list(grant.models) or [model.id],
                                "user_id": request.email, "metadata": metadata}
        body.update({name: getattr(grant, name) for name in _LIMITS if getattr(grant, name) is not None})
        return body

    def _call(self, method: str, path: str, key: str, *, accept: tuple[int, ...] = (),
              **kwargs: Any) -> httpx.Response:
        """One management call with quick retries; 2xx and the `accept`ed statuses are returned,
        everything else raised as TransientError or PermanentError."""
        what = f"LiteLLM {method} {path}"

        def attempt() -> httpx.Response:
            try:
                response = self._client.request(method, path, **kwargs)
            except httpx.ConnectTimeout:
                raise TransientError(f"{what} could not connect within {self._timeout:g} s", reached=False) from None
            except httpx.TimeoutException:
                # Already waited the whole timeout: no quick retry, the processor reschedules.
                raise TransientError(f"{what} timed out after {self._timeout:g} s", in_flight=True) from None
            except httpx.ConnectError as exc:  # never connected: the call changed nothing
                raise Retryable(TransientError(f"{what} failed: {type(exc).__name__}", reached=False)) from None
            except httpx.TransportError as exc:  # lost after sending: LiteLLM may still finish it
                raise Retryable(TransientError(f"{what} failed: {type(exc).__name__}", in_flight=True)) from None
            status = response.status_code
            if response.is_success or status in accept:
                return response
            message = self._error_message(response, key)
            if status == 429 or status >= 500:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                # A gateway's 502/504 answers for a LiteLLM that may still be working on the call.
                raise Retryable(TransientError(f"{what} answered {status}: {message}", retry_after,
                                               in_flight=status in (502, 504)))
            if status in (401, 403):
                raise PermanentError(f"{what} answered {status}: LiteLLM refused the master key ({message})")
            raise PermanentError(f"{what} answered {status}: {message}")

        return with_retries(attempt, what, retries=self._quick_retries, max_wait=self._max_inline_wait,
                            sleep=self._sleep)

    def _error_message(self, response: httpx.Response, key: str) -> str:
        """LiteLLM's own reason, from `{"error": {"message"}}`, `{"detail": ...}` or a validation
        error list (never its `input`, which echoes the request); scrubbed of every secret."""
        try:
            body = response.json()
        except ValueError:
            body = None
        message: Any = None
        if isinstance(body, dict):
            error, detail = body.get("error"), body.get("detail")
            if isinstance(error, dict):
                message = error.get("message")
            elif isinstance(error, str):
                message = error
            elif isinstance(detail, list):
                message = "; ".join(
                    f"{'.'.join(str(p) for p in item.get('loc', ()))}: {item.get('msg')}"
                    for item in detail if isinstance(item, dict))
            elif isinstance(detail, dict):
                message = detail.get("error") or detail.get("message") or detail
            elif detail is not None:
                message = detail
        if not message:
            message = response.reason_phrase or f"HTTP {response.status_code}"
        text = str(message)[:500]
        for secret in (key, self._master_key):
            if secret:
                text = text.replace(secret, "***")
        return text


def _new_key() -> str:
    # 32 random bytes -> 43 url-safe characters; LiteLLM wants "sk-" and 16+ characters.
    return "sk-" + secrets.token_urlsafe(32)


def _current_token(recorded: Credentials) -> str | None:
    key = recorded.secrets.get(SECRET_KEY)
    return token_id(key) if key else recorded.references.get(REF_TOKEN)


def _next_token(recorded: Credentials) -> str | None:
    key = recorded.secrets.get(SECRET_NEXT_KEY)
    return token_id(key) if key else recorded.references.get(REF_NEXT_TOKEN)


def _generation(recorded: Credentials) -> int:
    try:
        return max(1, int(recorded.references.get(REF_GENERATION) or 1))
    except ValueError:
        return 1


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise TransientError(f"LiteLLM {response.request.url.path} answered {response.status_code} "
                             "without JSON") from None
    return body if isinstance(body, dict) else {}


def _iso(value: Any) -> str:
    """LiteLLM's `expires` in one ISO 8601 form, whichever endpoint reported it."""
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).isoformat()
    except ValueError:
        return str(value)
