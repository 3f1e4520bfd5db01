"""The schema of `config.yaml`: model catalog, per-model provisioning, approval rules, notifications.

Validated once when the app loads. Every section forbids unknown keys, so a typo fails loudly
instead of silently disabling a rule (as the earlier service's string-loaded plugins did), and
a bad file names the file, the path of the bad field and the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from shared.domain.request import ascii_domain, canonical_email

MODEL_ID = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,62}$"
DURATION = r"^\d+[smhdw]$|^\d+mo$"  # what LiteLLM's duration_in_seconds parses (no years)


class ConfigError(Exception):
    """config.yaml cannot be used; the message names the file, the field and the reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- provisioning -------------------------------------------------------------------------------


class LiteLLMProvisioning(_Strict):
    """What a LiteLLM virtual key for this model grants (fields of LiteLLM's /key/generate)."""

    models: list[str] = Field(default_factory=list, description="LiteLLM model names; default: the catalog id")
    duration: str | None = Field("30d", pattern=DURATION, description="key lifetime, e.g. 30d; null: no expiry")
    max_budget: float | None = Field(None, gt=0)
    budget_duration: str | None = Field(None, pattern=DURATION)
    soft_budget: float | None = Field(None, gt=0)
    tpm_limit: int | None = Field(None, gt=0)
    rpm_limit: int | None = Field(None, gt=0)


class ApimProvisioning(_Strict):
    """An APIM subscription scoped to this product."""

    product_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$")
    expires_after_days: int | None = Field(None, gt=0)


Backend = Literal["litellm", "apim"]


def _litellm_only() -> list[Backend]:  # typed: mypy infers a lambda's ["litellm"] as list[str]
    return ["litellm"]


class Provisioning(_Strict):
    backends: list[Backend] = Field(default_factory=_litellm_only, min_length=1)
    litellm: LiteLLMProvisioning = Field(default_factory=LiteLLMProvisioning)
    apim: ApimProvisioning | None = None

    @model_validator(mode="after")
    def _apim_needs_product(self) -> Provisioning:
        if "apim" in self.backends and self.apim is None:
            raise ValueError("backends lists apim, so apim.product_id is required")
        if len(set(self.backends)) != len(self.backends):
            raise ValueError("backends lists a backend twice")
        return self


# --- catalog --------------------------------------------------------------------------------------


class CatalogModel(_Strict):
    """A model users can ask for; the first fields are what the frontend shows."""

    id: str = Field(pattern=MODEL_ID)
    title: str = Field(min_length=1)
    description: str = ""
    icon: str = ""
    color: str = ""
    auto_approve: bool | None = Field(
        None, description="true: approve without rules; false: always human review; null: rules decide"
    )
    provisioning: Provisioning = Field(default_factory=Provisioning)

    def public(self) -> dict:
        """What `GET /api/models` shows: never provisioning details."""
        return self.model_dump(include={"id", "title", "description", "icon", "color"})


class FeaturedModel(_Strict):
    id: str = Field(pattern=MODEL_ID)
    title: str = Field(min_length=1)
    subtitle: str = ""
    description: str = ""
    documentation_link: str = ""
    icon: str = ""
    color: str = ""


class KaitoModel(_Strict):
    """An open-source model served by a KAITO workspace (team access). The preset ends up in the
    Workspace name `{team}-{preset}` and in the team's gateway policy, so it is a plain name."""

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9.-]{0,40}[a-z0-9])?$")
    preset: str = Field(pattern=r"^[a-z0-9]([a-z0-9.-]{0,50}[a-z0-9])?$",
                        description="KAITO preset name, e.g. phi-3-mini-4k-instruct")
    instance_type: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
                               description="the GPU VM size, e.g. Standard_NC6s_v3")


# --- requests and rules -----------------------------------------------------------------------------


def _ascii_domains(value: list[str]) -> list[str]:
    return [ascii_domain(domain) for domain in value]


def _separators(value: list[str]) -> list[str]:
    for separator in value:
        if len(separator) != 1 or separator.isalnum() or separator in '@."':
            raise ValueError(f"{separator!r}: a tag separator is one character, not a letter, digit, @, . or \"")
    return value


class MailboxRule(_Strict):
    """How one mail provider reads the local part of its addresses (for canonical addresses)."""

    domains: list[str] = Field(min_length=1, description="exact domains (no subdomains), e.g. gmail.com")
    tag_separators: list[str] | None = Field(
        None, description="what starts a sub-address tag at these domains; null: requests.tag_separators")
    ignore_dots: bool = Field(False, description="the provider ignores dots in the local part (Gmail)")

    _domains = field_validator("domains")(_ascii_domains)

    @field_validator("tag_separators")
    @classmethod
    def _valid_separators(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _separators(value)


def _gmail_like() -> list[MailboxRule]:
    return [MailboxRule(domains=["gmail.com", "googlemail.com"], ignore_dots=True)]


class IntakeLimits(_Strict):
    """How much one mailbox, one domain and one instance may ask (null: no limit). Counted where every
    instance sees them (shared/store/limits.py), except the per-instance rate; over one: 429."""

    open_per_address: int | None = Field(3, ge=1, description="requests of one mailbox not yet finished")
    per_address_per_day: int | None = Field(10, ge=1, description="new requests of one mailbox per UTC day")
    per_domain_per_hour: int | None = Field(200, ge=1, description="new requests of one email domain per hour")
    per_instance_per_minute: int | None = Field(
        300, ge=1, description="POST /api/request-key calls one instance takes per minute")


class RequestPolicy(_Strict):
    allowed_email_domains: list[str] = Field(
        default_factory=list, description="empty: any domain; else only these (subdomains included)"
    )
    tag_separators: list[str] = Field(
        default_factory=lambda: ["+"], description="what starts a sub-address tag (alice+news@): cut off")
    mailboxes: list[MailboxRule] = Field(
        default_factory=_gmail_like, description="per-domain rules; the default ignores dots at Gmail")
    limits: IntakeLimits = Field(default_factory=IntakeLimits)
    deny_cooldown: str = Field("30d", pattern=DURATION,
                               description="after a denial, the same mailbox and model are refused this long (0d: not)")
    retention_days: int | None = Field(
        90, ge=1, description="finished requests (denied, revoked, failed, expired) are deleted this many days "
                              "after their last change, by the daily retention_timer (null: kept for ever)")

    _allowed = field_validator("allowed_email_domains")(_ascii_domains)
    _tags = field_validator("tag_separators")(_separators)

    @model_validator(mode="after")
    def _one_rule_per_domain(self) -> RequestPolicy:
        domains = [d for rule in self.mailboxes for d in rule.domains]
        repeated = sorted({d for d in domains if domains.count(d) > 1})
        if repeated:
            raise ValueError(f"mailboxes name a domain twice: {', '.join(repeated)}")
        return self

    @property
    def deny_cooldown_seconds(self) -> float:
        return duration_seconds(self.deny_cooldown)

    def canonical(self, address: str) -> str:
        """The one spelling of `address` (as normalise_email returns it) for duplicates, limits, blocks."""
        domain = address.rsplit("@", 1)[-1].lower()
        rule = next((r for r in self.mailboxes if domain in r.domains), None)
        separators = rule.tag_separators if rule is not None and rule.tag_separators is not None \
            else self.tag_separators
        return canonical_email(address, separators, bool(rule and rule.ignore_dots))


Decision = Literal["approve", "deny", "review"]


class MatchRule(_Strict):
    """Decides when every condition it names matches (globs, case-insensitive)."""

    kind: Literal["match"] = "match"
    decision: Decision
    emails: list[str] = Field(default_factory=list, description="globs, e.g. *@contoso.com")
    domains: list[str] = Field(default_factory=list, description="email domains, subdomains included")
    models: list[str] = Field(default_factory=list, description="globs over catalog ids")
    reason: str = ""

    @model_validator(mode="after")
    def _has_condition(self) -> MatchRule:
        if not (self.emails or self.domains or self.models):
            raise ValueError("a match rule needs at least one of emails, domains, models")
        return self


class WebhookRule(_Strict):
    """Asks an HTTP endpoint; its answer decides, an error never approves."""

    kind: Literal["webhook"]
    url: str = Field(pattern=r"^https?://")
    secret_setting: str = Field(
        "APPROVAL_WEBHOOK_SECRET", description="app setting holding the HMAC-SHA256 shared secret"
    )
    timeout_seconds: float = Field(5.0, gt=0, le=30)


Rule = Annotated[MatchRule | WebhookRule, Field(discriminator="kind")]


class Approval(_Strict):
    default: Decision = Field("approve", description="when no rule decides (the earlier service approved)")
    rules: list[Rule] = Field(default_factory=list)


SubjectKind = Literal["approved", "denied", "review", "failed", "undeliverable", "team",
                      "reminder", "expired", "renewed", "rotated", "revoked-by-requester"]


class Notifications(_Strict):
    product_name: str = "LLM Key Requestor"
    reviewers: list[str] = Field(default_factory=list)
    admins: list[str] = Field(default_factory=list)
    admin_url: str = ""
    # days before a key's expiry on which its owner is reminded (each reminder is sent once)
    expiry_reminders_days: list[int] = Field(default_factory=lambda: [14, 3])

    @field_validator("expiry_reminders_days")
    @classmethod
    def _reminder_days(cls, value: list[int]) -> list[int]:
        if any(day <= 0 for day in value):
            raise ValueError("every reminder is a number of days before the expiry, at least 1")
        return sorted(set(value), reverse=True)
    subjects: dict[SubjectKind, str] = Field(default_factory=dict)


# --- the whole file ---------------------------------------------------------------------------------


class Lifecycle(_Strict):
    """`provisioning:` at the top level: what every model's keys share over their life."""

    rotation_grace: str = Field("24h", pattern=DURATION,
                                description="how long a rotated key's predecessor keeps working")

    @property
    def rotation_grace_seconds(self) -> float:
        return duration_seconds(self.rotation_grace)


def duration_seconds(text: str) -> float:
    """A DURATION (30d, 24h, 2w, 1mo...) in seconds; a month counts 30 days, as LiteLLM does."""
    number, unit = (text[:-2], "mo") if text.endswith("mo") else (text[:-1], text[-1])
    return int(number) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "mo": 2592000}[unit]


class AppConfig(_Strict):
    models: list[CatalogModel] = Field(min_length=1)
    featured_models: list[FeaturedModel] = Field(default_factory=list)
    kaito_models: list[KaitoModel] = Field(default_factory=list)
    requests: RequestPolicy = Field(default_factory=RequestPolicy)
    approval: Approval = Field(default_factory=Approval)
    notifications: Notifications = Field(default_factory=Notifications)
    provisioning: Lifecycle = Field(default_factory=Lifecycle)

    _by_id: dict[str, CatalogModel] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> AppConfig:
        ids = [model.id for model in self.models]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"model ids must be unique; repeated: {', '.join(duplicates)}")
        unknown = [f.id for f in self.featured_models if f.id not in ids]
        if unknown:
            raise ValueError(f"featured_models name ids not in models: {', '.join(unknown)}")
        kaito = [k.name for k in self.kaito_models] + [k.preset for k in self.kaito_models if k.preset != k.name]
        repeated = sorted({n for n in kaito if kaito.count(n) > 1})
        if repeated:
            raise ValueError(f"kaito_models names and presets must be unique; repeated: {', '.join(repeated)}")
        return self

    def model_post_init(self, __context: object) -> None:
        self._by_id = {model.id: model for model in self.models}

    def model(self, model_id: str) -> CatalogModel | None:
        return self._by_id.get(model_id)

    def approvals_without_review(self) -> list[str]:
        """Where this file approves a request without a human: `auto_approve: true` models, match
        rules that approve, and `approval.default: approve` while a model leaves it to the rules.
        (A webhook is the operator's own approval service, trusted to check who asks.)"""
        found = [f"models[{i}] ({m.id}) auto_approve: true" for i, m in enumerate(self.models) if m.auto_approve]
        found += [f"approval.rules[{i}] decision: approve" for i, rule in enumerate(self.approval.rules)
                  if isinstance(rule, MatchRule) and rule.decision == "approve"]
        if self.approval.default == "approve" and any(m.auto_approve is None for m in self.models):
            found.append("approval.default: approve")
        return found


def _location(loc: tuple) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("match", "webhook") and path:
            continue  # pydantic's discriminator tag, not a field the user wrote
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def format_validation_error(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: {_location(e['loc'])}: {e['msg']}" for e in exc.errors()]
    return "\n".join(lines)


def load_config(path: Path) -> AppConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: (top level): must be a mapping with at least a 'models' list")
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc)) from None

