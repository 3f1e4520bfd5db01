"""App settings (environment variables) read into one typed, validated object.

Azure Functions hands app settings to the worker as environment variables, and locally the host
copies `local.settings.json` `Values` into the environment, so both paths meet here. Names follow
the earlier FastAPI service where one existed, so operators keep their settings.
Secrets are `SecretStr`: they never show in a repr, a log line or an error message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

APP_ROOT = Path(__file__).resolve().parent.parent
MIN_LINK_KEY_LENGTH = 32
# The LINK_SIGNING_KEY of local.settings.sample.json: fine on a laptop, refused on Azure.
LOCAL_SAMPLE_LINK_KEY = "local-only-link-signing-key-not-for-azure-0000"
IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class SettingsError(Exception):
    """A setting is missing or malformed; the message names it and says why."""


def _blank_to_none(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


def _is_local_host(hostname: str) -> bool:
    host = hostname.rsplit(":", 1)[0] if not hostname.endswith("]") else hostname
    return host.strip("[]").lower() in ("localhost", "127.0.0.1", "0.0.0.0", "::1")


def _on_azure(env: Mapping[str, str], hostname: str) -> bool:
    """App Service / Functions sets WEBSITE_* settings (WEBSITE_SITE_NAME, WEBSITE_INSTANCE_ID...);
    Core Tools sets only WEBSITE_HOSTNAME, to localhost:<port>, which is not Azure."""
    others = any(name.startswith("WEBSITE_") and name != "WEBSITE_HOSTNAME" and value.strip()
                 for name, value in env.items())
    return others or bool(hostname and not _is_local_host(hostname))


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    # Kubernetes store
    kubernetes_namespace: str = Field("", alias="KUBERNETES_NAMESPACE")
    # Finished requests move here, out of what the timer's sweeps read (shared/store/requests.py).
    kubernetes_archive_namespace: str = Field("", alias="KUBERNETES_ARCHIVE_NAMESPACE")
    kubeconfig: str | None = Field(None, alias="KUBECONFIG")
    kubernetes_timeout_seconds: float = Field(10.0, alias="KUBERNETES_TIMEOUT_SECONDS", gt=0)
    kubernetes_auth: Literal["kubeconfig", "entra"] = Field("kubeconfig", alias="KUBERNETES_AUTH")
    kubernetes_server: str | None = Field(None, alias="KUBERNETES_SERVER")
    kubernetes_ca_data: str | None = Field(None, alias="KUBERNETES_CA_DATA")
    # The teams' `{team}-api-key` Secrets live apart from the request Secrets: teams get read
    # access there (one Role per team, limited by resourceNames; docs/teams.md), never where every
    # requester's request is kept. `developer-requests` is where the earlier GitOps flow put them.
    team_keys_namespace: str = Field("developer-requests", alias="TEAM_KEYS_NAMESPACE")
    # Not an app setting: whether the app runs in a Kubernetes pod (KUBERNETES_SERVICE_HOST, set by
    # Kubernetes itself, is there), so KUBERNETES_AUTH=kubeconfig means the pod's service account.
    in_cluster: bool = Field(False, description="set by from_env from KUBERNETES_SERVICE_HOST")

    # Catalog, rules and notification settings
    config_file: Path = Field(APP_ROOT / "config.yaml", alias="CONFIG_FILE")

    # The timers (shared/timer.py). Their schedules, APPROVAL_SCHEDULE and TEAM_SCHEDULE, are read
    # by the Functions host itself (`%APPROVAL_SCHEDULE%`), not here. Each tick stops taking new
    # work after its budget; the step already running still finishes, so budget + the longest step
    # must fit in host.json functionTimeout (checked at start-up: shared/startup_checks.py).
    # 180 + a step of up to PROCESSOR_LEASE_SECONDS (120) = 300 s, the shipped functionTimeout.
    processor_concurrency: int = Field(8, alias="PROCESSOR_CONCURRENCY", ge=1, le=64)
    processor_time_budget_seconds: float = Field(
        180.0, alias="PROCESSOR_TIME_BUDGET_SECONDS", gt=0,
        description="the request tick (approval_timer) stops taking new work after this long")
    team_time_budget_seconds: float = Field(
        60.0, alias="TEAM_TIME_BUDGET_SECONDS", gt=0,
        description="the team tick (team_timer) stops taking new work after this long")
    processor_max_attempts: int = Field(6, alias="PROCESSOR_MAX_ATTEMPTS", ge=1)
    processor_lease_seconds: float = Field(120.0, alias="PROCESSOR_LEASE_SECONDS", gt=0)
    processor_backoff_seconds: float = Field(10.0, alias="PROCESSOR_BACKOFF_SECONDS", gt=0)

    # Outbound TLS: an extra CA bundle (PEM) trusted by every outbound client but Kubernetes,
    # for corporate proxies and private CAs, as the earlier service's /certs mount allowed.
    ca_bundle: Path | None = Field(None, alias="CA_BUNDLE")

    # LiteLLM
    litellm_base_url: str = Field("http://localhost:4000", alias="LITELLM_BASE_URL")
    litellm_api_key: SecretStr | None = Field(None, alias="LITELLM_API_KEY")
    litellm_gateway_url: str | None = Field(None, alias="LITELLM_GATEWAY_URL")

    litellm_timeout_seconds: float = Field(10.0, alias="LITELLM_TIMEOUT_SECONDS", gt=0)

    # Azure API Management (subscriptions per request, products per team)
    apim_subscription_id: str | None = Field(None, alias="APIM_SUBSCRIPTION_ID")
    apim_resource_group: str | None = Field(None, alias="APIM_RESOURCE_GROUP")
    apim_service_name: str | None = Field(None, alias="APIM_SERVICE_NAME")
    apim_gateway_url: str | None = Field(None, alias="APIM_GATEWAY_URL")
    apim_team_api_ids: str = Field("", alias="APIM_TEAM_API_IDS",
                                   description="comma-separated APIM API ids every team product is linked to")
    arm_endpoint: str = Field("https://management.azure.com", alias="ARM_ENDPOINT")
    azure_client_id: str | None = Field(
        None, alias="AZURE_CLIENT_ID", description="user-assigned managed identity; empty: system-assigned"
    )

    # Email: Azure Communication Services when configured, else SMTP, else a local outbox folder
    acs_connection_string: SecretStr | None = Field(None, alias="ACS_CONNECTION_STRING")
    acs_endpoint: str | None = Field(None, alias="ACS_ENDPOINT")
    acs_sender_address: str | None = Field(None, alias="ACS_SENDER_ADDRESS")
    email_outbox_dir: Path = Field(Path("outbox"), alias="EMAIL_OUTBOX_DIR")

    # SMTP
    smtp_host: str | None = Field(None, alias="SMTP_HOST")
    smtp_port: int = Field(587, alias="SMTP_PORT", ge=1, le=65535)
    smtp_user: str | None = Field(None, alias="SMTP_USER")
    smtp_password: SecretStr | None = Field(None, alias="SMTP_PASSWORD")
    smtp_from: str = Field("noreply@example.com", alias="SMTP_FROM")
    smtp_use_tls: Literal["starttls", "tls", "none"] = Field(
        "starttls", validation_alias=AliasChoices("SMTP_USE_TLS", "smtp_use_tls")
    )

    smtp_verify_tls: bool = Field(True, alias="SMTP_VERIFY_TLS")
    smtp_timeout_seconds: float = Field(15.0, alias="SMTP_TIMEOUT_SECONDS", gt=0)

    # Admin API: Basic auth (the earlier admin panel), an API key (CI and scripts), or App Service
    # authentication (Entra ID) with an app role, side by side.
    admin_username: str = Field("admin", alias="ADMIN_USERNAME")
    admin_password: SecretStr | None = Field(None, alias="ADMIN_PASSWORD")
    admin_api_key: SecretStr | None = Field(None, alias="ADMIN_API_KEY")
    admin_trust_app_service_auth: bool = Field(False, alias="ADMIN_TRUST_APP_SERVICE_AUTH")
    admin_role: str = Field("KeyRequestor.Admin", alias="ADMIN_ROLE")
    admin_login_attempts_per_minute: int = Field(10, alias="ADMIN_LOGIN_ATTEMPTS_PER_MINUTE", ge=1)
    # The origins of the frontend and the admin panel: the Function App's CORS list (Terraform sets
    # both from one variable; the local host copies Host.CORS here). An admin write that carries
    # another Origin is refused (shared/http/writes.py).
    cors_allowed_origins: str = Field("", alias="CORS_ALLOWED_ORIGINS")

    # Requester links in emails (renew, rotate, revoke, ask again): signed with LINK_SIGNING_KEY,
    # pointing at PUBLIC_BASE_URL, valid for LINK_TTL_DAYS. The key is required on Azure; elsewhere an
    # unset key is replaced by a random one per process (shared/context.py), so links stop working at
    # a restart; the local sample ships a fixed local-only value.
    link_signing_key: SecretStr | None = Field(None, alias="LINK_SIGNING_KEY")
    public_base_url: str | None = Field(
        None, alias="PUBLIC_BASE_URL",
        description="the app's public URL in links; default https://<WEBSITE_HOSTNAME>, else http://127.0.0.1:7071")
    link_ttl_days: int = Field(30, alias="LINK_TTL_DAYS", ge=1, le=365)
    # Not app settings: whether the app runs on App Service / Functions (the platform's WEBSITE_*
    # settings are there; see _on_azure), and the host name the platform gives it (WEBSITE_HOSTNAME).
    on_azure: bool = Field(False, description="set by from_env from the platform's WEBSITE_* settings")
    website_hostname: str = Field("", description="set by from_env from WEBSITE_HOSTNAME")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", alias="LOG_LEVEL")

    _blank = field_validator(
        "kubeconfig", "kubernetes_server", "kubernetes_ca_data", "ca_bundle", "litellm_api_key", "litellm_gateway_url",
        "smtp_host", "smtp_user", "smtp_password", "admin_password", "admin_api_key", "apim_subscription_id",
        "apim_resource_group", "apim_service_name", "apim_gateway_url", "azure_client_id", "acs_connection_string",
        "acs_endpoint", "acs_sender_address", "link_signing_key", "public_base_url", mode="before",
    )(_blank_to_none)

    @field_validator("link_signing_key")
    @classmethod
    def _strong_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < MIN_LINK_KEY_LENGTH:
            raise ValueError(f"must be at least {MIN_LINK_KEY_LENGTH} characters (e.g. openssl rand -base64 48)")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlsplit(value.strip())
        if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.query or parsed.fragment:
            raise ValueError("must be an http(s) URL such as https://keys.example.com (no query or fragment)")
        return value.strip().rstrip("/")

    @model_validator(mode="after")
    def _azure_needs_a_link_key(self) -> Settings:
        if self.on_azure:
            if self.link_signing_key is None:
                raise ValueError("LINK_SIGNING_KEY: required on Azure (it signs the links in emails); "
                                 "a Key Vault secret, see infra/README.md")
            if self.link_signing_key.get_secret_value() == LOCAL_SAMPLE_LINK_KEY:
                raise ValueError("LINK_SIGNING_KEY: the local sample's value cannot be used on Azure")
        return self

    @field_validator("cors_allowed_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for origin in (o.strip() for o in value.split(",") if o.strip()):
            parsed = urlsplit(origin)
            if origin != "*" and (parsed.scheme not in ("http", "https") or not parsed.hostname
                                  or parsed.path.strip("/") or parsed.query or parsed.fragment):
                raise ValueError(f"{origin[:100]!r} is not an origin such as https://keys.example.com (or *)")
        return value

    @model_validator(mode="after")
    def _no_wildcard_origin_on_azure(self) -> Settings:
        if self.on_azure and "*" in self.cors_origins:
            raise ValueError("CORS_ALLOWED_ORIGINS: * is for local runs; list the real origins on Azure")
        return self

    @field_validator("team_keys_namespace", mode="before")
    @classmethod
    def _namespace_name(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip() or "developer-requests"
            if len(value) > 63 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", value):
                raise ValueError(f"{value[:70]!r} is not a Kubernetes namespace name (lower-case letters, digits "
                                 "and '-', at most 63)")
        return value

    @field_validator("smtp_use_tls", mode="before")
    @classmethod
    def _tls_mode(cls, value: object) -> object:
        # The earlier service took a boolean here: true meant STARTTLS on port 587.
        if isinstance(value, str):
            lowered = value.strip().lower()
            return {"true": "starttls", "1": "starttls", "yes": "starttls",
                    "false": "none", "0": "none", "no": "none", "ssl": "tls"}.get(lowered, lowered)
        return value

    @field_validator("kubernetes_auth", mode="before")
    @classmethod
    def _auth_mode(cls, value: object) -> object:
        # Any case and spacing (`Entra`, `ENTRA`); blank is the default. As shared.store.kube.auth_mode.
        if isinstance(value, str):
            mode = value.strip().lower() or "kubeconfig"
            if mode not in ("kubeconfig", "entra"):
                raise ValueError(f"must be kubeconfig or entra (any case), not {value.strip()!r}")
            return mode
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("config_file")
    @classmethod
    def _relative_to_app(cls, value: Path) -> Path:
        # The worker's working directory is not guaranteed on Azure: resolve against the app root.
        return value if value.is_absolute() else APP_ROOT / value

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file {value} does not exist")
        return value

    @property
    def public_url(self) -> str:
        """Where requesters reach the app: PUBLIC_BASE_URL, else https://<WEBSITE_HOSTNAME>, else the local host."""
        if self.public_base_url:
            return self.public_base_url
        if self.website_hostname:
            scheme = "http" if _is_local_host(self.website_hostname) else "https"  # Core Tools: localhost:7071
            return f"{scheme}://{self.website_hostname}"
        return "http://127.0.0.1:7071"

    @property
    def public_origin(self) -> str:
        """scheme://host[:port] of `public_url`, as a browser sends it in `Origin`."""
        parsed = urlsplit(self.public_url)
        return f"{parsed.scheme}://{parsed.netloc}".lower()

    @property
    def cors_origins(self) -> frozenset[str]:
        """CORS_ALLOWED_ORIGINS as a browser sends them in `Origin`: lower-case, no trailing slash."""
        return frozenset(o.strip().rstrip("/").lower() for o in self.cors_allowed_origins.split(",") if o.strip())

    @property
    def namespace(self) -> str:
        """The configured namespace, else the pod's own, else `default` (as the earlier service)."""
        if self.kubernetes_namespace.strip():
            return self.kubernetes_namespace.strip()
        if IN_CLUSTER_NAMESPACE_FILE.is_file():
            return IN_CLUSTER_NAMESPACE_FILE.read_text().strip()
        return "default"

    @property
    def archive_namespace(self) -> str:
        """Where finished requests are kept: KUBERNETES_ARCHIVE_NAMESPACE, else `<namespace>-archive`."""
        return self.kubernetes_archive_namespace.strip() or f"{self.namespace}-archive"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        unresolved = sorted(name for name, value in env.items() if value.startswith("@Microsoft.KeyVault("))
        if unresolved:
            # App Service hands the reference text over when it cannot read the secret.
            raise SettingsError(f"invalid app settings: {', '.join(unresolved)}: unresolved Key Vault "
                                "reference (does the app's identity have Key Vault Secrets User?)")
        hostname = env.get("WEBSITE_HOSTNAME", "").strip()
        values: dict[str, object] = {**env, "in_cluster": bool(env.get("KUBERNETES_SERVICE_HOST", "").strip()),
                                     "on_azure": _on_azure(env, hostname), "website_hostname": hostname}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                name = ".".join(str(part) for part in error["loc"])
                message = error["msg"].removeprefix("Value error, ")
                problems.append(f"{name}: {message}" if name else message)
            raise SettingsError("invalid app settings: " + "; ".join(problems)) from None
