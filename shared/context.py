"""The composition root: settings, config and adapters, built once per worker process.

Settings and config.yaml are validated at start-up (`load`), so a bad value stops the app with
a clear message instead of failing the first request. Adapters are built on first use, which
keeps their SDK imports off the cold-start path.
"""

from __future__ import annotations

import functools
import logging
import threading

from shared.config import AppConfig, load_config
from shared.services.ports import RequestStore
from shared.settings import Settings

log = logging.getLogger(__name__)
_lock = threading.Lock()


@functools.cache
def settings() -> Settings:
    return Settings.from_env()


@functools.cache
def config() -> AppConfig:
    return load_config(settings().config_file)


def load() -> None:
    """Validate settings and config.yaml now; raise SettingsError or ConfigError if either is bad."""
    logging.getLogger("shared").setLevel(settings().log_level)
    loaded = config()
    log.info("config %s: %d models, %d rules", settings().config_file, len(loaded.models),
             len(loaded.approval.rules))


def request_store() -> RequestStore:
    with _lock:  # built once even when the first invocations arrive together
        return _request_store()


@functools.cache
def _request_store() -> RequestStore:
    from shared.store.kube import api_client
    from shared.store.requests import KubernetesRequestStore

    current = settings()
    return KubernetesRequestStore(api_client(current.kubeconfig), current.namespace,
                                  current.kubernetes_timeout_seconds)


def reset() -> None:
    """Forget everything built so far (tests change the environment between cases)."""
    for cached in (settings, config, _request_store):
        cached.cache_clear()
