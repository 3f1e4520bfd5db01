"""Start-up refusals about time: a timer tick must end inside host.json's functionTimeout, and a
lease must outlast the step it guards.

A tick's time budget only stops it taking new work: the step already running finishes, and the
host kills an invocation that outlives functionTimeout, possibly between a backend call and the
write that records it. A lease that runs out while its step still runs lets a second processor
start the same step. Both are configuration mistakes, refused by `context.load()` with the names
of the settings involved.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from shared.adapters.http_retry import MAX_INLINE_WAIT, QUICK_RETRIES
from shared.config import AppConfig, ConfigError, WebhookRule
from shared.settings import APP_ROOT, Settings, SettingsError

HOST_JSON = APP_ROOT / "host.json"  # beside function_app.py
DEFAULT_FUNCTION_TIMEOUT_SECONDS = 30 * 60.0  # Flex Consumption, when host.json sets none

# How the adapters are built (shared/context.py): the values they get from their defaults, not
# from a setting. tests/test_settings_and_config.py checks these against the adapters' signatures.
ADAPTER_TRIES = 1 + QUICK_RETRIES  # LiteLLMProvisioner and ApimService: quick_retries=2
ADAPTER_INLINE_WAIT_SECONDS = MAX_INLINE_WAIT  # the longest in-line wait before each quick retry
APIM_TIMEOUT_SECONDS = 10.0  # ApimService(timeout_seconds=10.0); no APIM_TIMEOUT_SECONDS setting
ACS_TIMEOUT_SECONDS = 30.0  # AcsNotifier(timeout=30.0): the whole send and its status polls, one try

# TimeSpan as host.json writes it: [d.]hh:mm:ss[.fffffff]
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")


def longest_step_seconds(settings: Settings, config: AppConfig | None = None) -> float:
    """How long one step of the processor or the team reconciler can take at most, in seconds:
    the slowest backend call sequence it can make, plus the Kubernetes write that records the step.

    A backend call sequence is one call with its in-call retries, each try waiting out its whole
    timeout and each quick retry the longest in-line wait (http_retry.MAX_INLINE_WAIT):
    - LiteLLM (always built): LITELLM_TIMEOUT_SECONDS x 3 tries + 2 in-line waits;
    - APIM, when APIM_* is configured (request subscriptions and team products): 10 s x 3 tries
      + 2 in-line waits;
    - email: ACS (when ACS_* is configured) 30 s, one try; else SMTP (when SMTP_HOST is set)
      SMTP_TIMEOUT_SECONDS, one try; else the outbox (a local file, counted as 0);
    - Kubernetes (KAITO Workspaces, a team's `{team}-api-key` Secret, the request store):
      KUBERNETES_TIMEOUT_SECONDS per write;
    - with `config`: the approval webhooks, called in turn by one rule evaluation, so the sum of
      their `timeout_seconds` (one try each).
    A step makes one such sequence and then records it: + KUBERNETES_TIMEOUT_SECONDS.
    """
    tried = ADAPTER_TRIES * settings.litellm_timeout_seconds + (ADAPTER_TRIES - 1) * ADAPTER_INLINE_WAIT_SECONDS
    sequences = [tried, settings.kubernetes_timeout_seconds]
    if settings.apim_subscription_id and settings.apim_resource_group and settings.apim_service_name:
        sequences.append(ADAPTER_TRIES * APIM_TIMEOUT_SECONDS + (ADAPTER_TRIES - 1) * ADAPTER_INLINE_WAIT_SECONDS)
    if settings.acs_connection_string or settings.acs_endpoint:
        sequences.append(ACS_TIMEOUT_SECONDS)
    elif settings.smtp_host:
        sequences.append(settings.smtp_timeout_seconds)
    if config is not None:
        sequences.append(sum(rule.timeout_seconds for rule in config.approval.rules if isinstance(rule, WebhookRule)))
    return max(sequences) + settings.kubernetes_timeout_seconds


def function_timeout_seconds(host_json: Path = HOST_JSON) -> float | None:
    """host.json's `functionTimeout` in seconds; None when it is "-1" (unbounded). Absent (or no
    host.json): the Flex Consumption default, 30 minutes."""
    try:
        doc = json.loads(host_json.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        return DEFAULT_FUNCTION_TIMEOUT_SECONDS
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{host_json}: cannot read it: {exc}") from None
    raw = doc.get("functionTimeout") if isinstance(doc, dict) else None
    if raw is None:
        return DEFAULT_FUNCTION_TIMEOUT_SECONDS
    text = str(raw).strip()
    if text == "-1":
        return None
    match = _TIMESPAN.match(text)
    if not match:
        raise ConfigError(f"{host_json}: functionTimeout {raw!r} is not hh:mm:ss (or -1 for no limit)")
    days, hours, minutes, seconds = match.groups()
    if int(minutes) > 59 or float(seconds) >= 60:
        raise ConfigError(f"{host_json}: functionTimeout {raw!r} is not hh:mm:ss (or -1 for no limit)")
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def check_timing(settings: Settings, config: AppConfig | None = None, host_json: Path = HOST_JSON) -> None:
    """Raise SettingsError when a timer's budget + the longest step exceeds functionTimeout, or
    when PROCESSOR_LEASE_SECONDS is shorter than the longest step."""
    step = longest_step_seconds(settings, config)
    step_text = (f"the longest step ({step:g} s, from LITELLM_TIMEOUT_SECONDS, KUBERNETES_TIMEOUT_SECONDS, "
                 "SMTP_TIMEOUT_SECONDS and the configured backends' tries)")
    limit = function_timeout_seconds(host_json)
    problems = []
    if limit is not None:
        for timer, name, budget in (("approval_timer", "PROCESSOR_TIME_BUDGET_SECONDS",
                                     settings.processor_time_budget_seconds),
                                    ("team_timer", "TEAM_TIME_BUDGET_SECONDS", settings.team_time_budget_seconds)):
            if budget + step > limit:
                fix = (f"set {name} to at most {limit - step:g}, or shorten the timeouts" if limit > step
                       else "shorten the timeouts, or raise functionTimeout")
                problems.append(
                    f"{name} ({budget:g} s) + {step_text} is {budget + step:g} s, more than host.json "
                    f"functionTimeout ({limit:g} s): the host could stop {timer} in the middle of a step; {fix}")
    if settings.processor_lease_seconds < step:
        problems.append(f"PROCESSOR_LEASE_SECONDS ({settings.processor_lease_seconds:g} s) is shorter than "
                        f"{step_text}: a lease could run out while its step still runs; set it to at least "
                        f"{step:g}, or shorten the timeouts")
    if problems:
        raise SettingsError("invalid app settings: " + "; ".join(problems))
