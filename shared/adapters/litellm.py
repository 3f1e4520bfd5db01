"""Issues and revokes LiteLLM virtual keys through the proxy's management API.

Idempotent without a database of our own: `prepare` chooses the key and derives the alias from
the request id, the processor records both before `issue`, and LiteLLM refuses a second key with
the same alias. So a retry after a crash either creates the key or meets our own key under that
alias; the recorded key is the live one either way.
Keys never appear in a URL, a message, a log line or a repr: /key/info and /key/delete are
called with the key's SHA-256 (LiteLLM's own token id), and every message is scrubbed.
"""

from __future__ import annotations

import hashlib
import logging
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
from shared.domain.request import KeyRequest
from shared.services.ports import Credentials, PermanentError, TransientError

log = logging.getLogger(__name__)

SECRET_KEY = "litellm-api-key"
REF_ALIAS = "litellm-key-alias"
REF_EXPIRES = "litellm-key-expires"

_LIMITS = ("duration", "max_budget", "budget_duration", "soft_budget", "tpm_limit", "rpm_limit")


def key_alias(request: KeyRequest) -> str:
    return f"llm-key-request-{request.id}"


def token_id(key: str) -> str:
    """LiteLLM's id of a key (`hash_token`): what it stores, and accepts wherever a key is asked for."""
    return hashlib.sha256(key.encode()).hexdigest()


class LiteLLMProvisioner:
    backend = "litellm"

    def __init__(self, base_url: str, master_key: str, *, timeout_seconds: float = 10.0,
                 ca_bundle: Path | str | None = None, quick_retries: int = 2,
                 max_inline_wait: float = 5.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self._base_url = base_url.rstrip("/")
        self._sleep = sleep
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
        # 32 random bytes -> 43 url-safe characters; LiteLLM wants "sk-" and 16+ characters.
        return Credentials(secrets={SECRET_KEY: "sk-" + secrets.token_urlsafe(32)},
                           references={REF_ALIAS: key_alias(request)})

    def issue(self, request: KeyRequest, model: CatalogModel, prepared: Credentials) -> Credentials:
        key = prepared.secrets[SECRET_KEY]
        alias = prepared.references[REF_ALIAS]
        body = self._generate_body(request, model, key, alias)
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
            expires = (_json(info).get("info") or {}).get("expires")
        else:
            log.info("LiteLLM key %s issued for models %s (request %s)", alias, body["models"], request.id)
            expires = _json(response).get("expires")
        references = {REF_ALIAS: alias}
        if expires:
            references[REF_EXPIRES] = _iso(expires)
        return Credentials(secrets={SECRET_KEY: key}, references=references)

    def revoke(self, request: KeyRequest, recorded: Credentials) -> None:
        key = recorded.secrets.get(SECRET_KEY)
        alias = recorded.references.get(REF_ALIAS, key_alias(request))
        if not key:
            # Nothing was prepared, so nothing can have been issued under our key.
            log.info("LiteLLM key %s: no key recorded, nothing to revoke (request %s)", alias, request.id)
            return
        response = self._call("POST", "/key/delete", key, json={"keys": [token_id(key)]}, accept=(404,))
        outcome = "was already gone" if response.status_code == 404 else "deleted"
        log.info("LiteLLM key %s %s (request %s)", alias, outcome, request.id)

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
