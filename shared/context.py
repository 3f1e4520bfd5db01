"""The composition root: settings, config and adapters, built once per worker process.

Settings and config.yaml are validated at start-up (`load`), so a bad value stops the app with
a clear message instead of failing the first request. Adapters are built on first use, which
keeps their SDK imports off the cold-start path.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import threading
from datetime import timedelta

from shared import telemetry
from shared.config import AppConfig, ConfigError, WebhookRule, load_config
from shared.services.links import LinkMaker
from shared.services.ports import Provisioner, RequestStore
from shared.settings import Settings, SettingsError

log = logging.getLogger(__name__)
_lock = threading.RLock()


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
    _check_config_against_settings(loaded, settings())
    check_azure_email(settings())
    from shared.startup_checks import check_timing

    check_timing(settings(), loaded)  # budgets and the lease against the longest step, functionTimeout
    link_maker()  # says at start-up when links are signed with a key of this process only
    log.info("config %s: %d models, %d rules", settings().config_file, len(loaded.models),
             len(loaded.approval.rules))


def check_azure_email(current: Settings) -> None:
    """On Azure, keys reach people by email only: the outbox folder is for local runs."""
    if current.on_azure and not (current.acs_connection_string or current.acs_endpoint or current.smtp_host):
        raise SettingsError("invalid app settings: neither ACS_CONNECTION_STRING / ACS_ENDPOINT nor SMTP_HOST is "
                            "set: on Azure every email (keys, denials, reviews) would be written to an instance's "
                            "EMAIL_OUTBOX_DIR and reach nobody; configure Azure Communication Services or SMTP")


def _check_config_against_settings(loaded: AppConfig, current: Settings) -> None:
    """What config.yaml needs from the app settings must be there, or the app does not start."""
    problems = []
    for number, rule in enumerate(loaded.approval.rules):
        if isinstance(rule, WebhookRule) and not os.environ.get(rule.secret_setting, "").strip():
            problems.append(f"approval.rules[{number}]: the webhook's secret setting {rule.secret_setting} is not set")
    apim_missing = [name for name, value in (("APIM_SUBSCRIPTION_ID", current.apim_subscription_id),
                                             ("APIM_RESOURCE_GROUP", current.apim_resource_group),
                                             ("APIM_SERVICE_NAME", current.apim_service_name)) if not value]
    if apim_missing:
        for index, model in enumerate(loaded.models):
            if "apim" in model.provisioning.backends:
                problems.append(f"models[{index}] ({model.id}) uses backend apim, but {', '.join(apim_missing)} "
                                "is not set")
    if current.litellm_api_key is None:
        litellm = [f"models[{index}] ({model.id})" for index, model in enumerate(loaded.models)
                   if "litellm" in model.provisioning.backends]
        if litellm:
            problems.append(f"{', '.join(litellm)} {'uses' if len(litellm) == 1 else 'use'} backend litellm, "
                            "but LITELLM_API_KEY (the LiteLLM master key) is not set")
    automatic = loaded.approvals_without_review()
    if current.on_azure and not loaded.requests.allowed_email_domains and automatic:
        problems.append("requests.allowed_email_domains is empty, so anyone on the internet may ask, and "
                        f"{'; '.join(automatic)} would approve them without review: list your email domains, "
                        "or send every request to review (no auto_approve: true, no approve rule, "
                        "approval.default: review or deny)")
    if problems:
        raise ConfigError("\n".join(f"{current.config_file}: {problem}" for problem in problems))


# LINK_SIGNING_KEY unset outside Azure (Settings refuses that on Azure): one random key for this
# process, kept across reset(), so links work until the process restarts.
_process_link_key = secrets.token_urlsafe(48)


def link_signing_key() -> str:
    key = settings().link_signing_key
    return key.get_secret_value() if key is not None else _process_link_key


def link_maker() -> LinkMaker:
    """The requester links of emails and the pages they open (shared/services/links.py)."""
    with _lock:
        return _link_maker()


@functools.cache
def _link_maker() -> LinkMaker:
    current = settings()
    if current.link_signing_key is None:
        log.warning("LINK_SIGNING_KEY is not set: links in emails are signed with a random key of this "
                    "process and stop working when it restarts")
    return LinkMaker(current.public_url, link_signing_key(), timedelta(days=current.link_ttl_days))


def request_store() -> RequestStore:
    with _lock:  # built once even when the first invocations arrive together
        return _request_store()


def kube_client():
    """The one Kubernetes ApiClient of this process: the request store, the team store and KAITO
    share its connection pool and, with KUBERNETES_AUTH=entra, its token."""
    with _lock:
        return _kube_client()


@functools.cache
def _kube_client():
    from shared.store.kube import api_client

    current = settings()
    return api_client(current.kubeconfig, auth=current.kubernetes_auth, server=current.kubernetes_server,
                      ca_data=current.kubernetes_ca_data, client_id=current.azure_client_id,
                      in_cluster=current.in_cluster)


@functools.cache
def _request_store() -> RequestStore:
    from shared.store.requests import KubernetesRequestStore

    current = settings()
    return KubernetesRequestStore(kube_client(), current.namespace, current.kubernetes_timeout_seconds,
                                  archive_namespace=current.archive_namespace)


def block_store():
    """Admin blocks of addresses and domains, in the request store's namespace (shared/store/blocks.py)."""
    with _lock:
        return _block_store()


@functools.cache
def _block_store():
    from shared.store.blocks import KubernetesBlockStore
    from shared.store.secrets import SecretsGateway

    current = settings()
    return KubernetesBlockStore(SecretsGateway(kube_client(), current.namespace, current.kubernetes_timeout_seconds))


def processor():
    with _lock:
        return _processor()


@functools.cache
def _processor():
    """The approval processor with every adapter this deployment configures, built once."""
    from shared.adapters.email_factory import notifier_from_settings
    from shared.adapters.litellm import LiteLLMProvisioner
    from shared.adapters.webhook import WebhookApprover
    from shared.services.processor import Processor, ProcessorOptions

    current = settings()
    provisioners: dict[str, Provisioner] = {"litellm": LiteLLMProvisioner(
        current.litellm_base_url,
        current.litellm_api_key.get_secret_value() if current.litellm_api_key else "",
        timeout_seconds=current.litellm_timeout_seconds, ca_bundle=current.ca_bundle)}
    if current.apim_subscription_id and current.apim_resource_group and current.apim_service_name:
        from shared.adapters.apim import ApimProvisioner

        provisioners["apim"] = ApimProvisioner.from_settings(current)
    options = ProcessorOptions(
        concurrency=current.processor_concurrency,
        time_budget_seconds=current.processor_time_budget_seconds,
        lease_seconds=current.processor_lease_seconds,
        max_attempts=current.processor_max_attempts,
        backoff_base_seconds=current.processor_backoff_seconds,
        litellm_base_url=current.litellm_gateway_url or current.litellm_base_url,
        apim_gateway_url=current.apim_gateway_url,
    )
    return Processor(request_store(), config(), provisioners, telemetry.measured(notifier_from_settings(current)),
                     WebhookApprover(current.ca_bundle), options, links=link_maker())


# --- team access (docs/teams.md) ------------------------------------------------------------------


def team_api_ids(current: Settings | None = None) -> tuple[str, ...]:
    """APIM_TEAM_API_IDS: the APIM API ids every team product is linked to (comma-separated)."""
    raw = (current or settings()).apim_team_api_ids
    return tuple(dict.fromkeys(item.strip() for item in raw.split(",") if item.strip()))


def team_store():
    with _lock:
        return _team_store()


@functools.cache
def _team_store():
    from shared.store.teams import KubernetesTeamStore

    current = settings()
    return KubernetesTeamStore(kube_client(), current.namespace, current.kubernetes_timeout_seconds,
                               keys_namespace=current.team_keys_namespace)


def team_reconciler():
    with _lock:
        return _team_reconciler()


@functools.cache
def _team_reconciler():
    """The team reconciler (a use case of its own, run by the team timer)."""
    from shared.adapters.email_factory import notifier_from_settings
    from shared.adapters.kaito import KaitoWorkspaces
    from shared.services.team_reconciler import TeamReconciler, TeamReconcilerOptions

    current = settings()
    apim = None
    if current.apim_subscription_id and current.apim_resource_group and current.apim_service_name:
        from shared.adapters.apim_products import ApimTeamProducts

        apim = ApimTeamProducts.from_settings(current)
    options = TeamReconcilerOptions(
        api_ids=team_api_ids(current),
        keys_namespace=current.team_keys_namespace,
        gateway_url=current.apim_gateway_url,
        concurrency=current.processor_concurrency,
        time_budget_seconds=current.team_time_budget_seconds,
        lease_seconds=current.processor_lease_seconds,
        max_attempts=current.processor_max_attempts,
        backoff_base_seconds=current.processor_backoff_seconds,
        rotation_grace_seconds=config().provisioning.rotation_grace_seconds,
    )
    workspaces = KaitoWorkspaces(kube_client(), current.namespace, current.kubernetes_timeout_seconds)
    return TeamReconciler(team_store(), apim, workspaces, telemetry.measured(notifier_from_settings(current)),
                          config().notifications, options)


def reset() -> None:
    """Forget everything built so far (tests change the environment between cases)."""
    for cached in (settings, config, _kube_client, _request_store, _processor, _team_store, _team_reconciler,
                   _link_maker, _block_store):
        cached.cache_clear()
    from shared.http.auth import failed_logins
    from shared.services.intake import instance_rate

    instance_rate.reset()  # the per-instance intake rate counts from nothing again
    failed_logins.reset()  # and so do the failed logins (per address, per username)
