"""Approval rules: who gets a key without a human. Pure; the webhook's I/O is behind a callable.

Order: the model's `auto_approve` first (true approves, false sends to review), then the rules
in the order config.yaml lists them (the first that decides wins), then `approval.default`.
A webhook that errors or times out never approves: its error propagates, so the processor
retries and, after the configured attempts, sends the request to review.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Sequence
from typing import Literal

from shared.config import Approval, CatalogModel, MatchRule, WebhookRule
from shared.domain.request import KeyRequest

DecisionKind = Literal["approve", "deny", "review"]


@dataclasses.dataclass(frozen=True)
class Decision:
    decision: DecisionKind
    reason: str
    decided_by: str  # "auto-approve", "rule 2", "webhook rule 3", "default"


# (rule, request) -> the webhook's decision, or None when it has no opinion (the next rule decides).
AskWebhook = Callable[[WebhookRule, KeyRequest], "Decision | None"]


def _matches(rule: MatchRule, request: KeyRequest) -> bool:
    email = request.email.lower()
    domain = email.rsplit("@", 1)[-1]
    checks = []
    if rule.emails:
        checks.append(any(fnmatch.fnmatchcase(email, glob.lower()) for glob in rule.emails))
    if rule.domains:
        checks.append(any(domain == d.lower() or domain.endswith("." + d.lower()) for d in rule.domains))
    if rule.models:
        checks.append(any(fnmatch.fnmatchcase(request.model.lower(), glob.lower()) for glob in rule.models))
    return all(checks)


def in_domains(domain: str, domains: Sequence[str]) -> bool:
    """`domain` is one of `domains` or a subdomain of one (all lower-case ASCII)."""
    return any(domain == d or domain.endswith("." + d) for d in domains)


def decide(request: KeyRequest, model: CatalogModel | None, approval: Approval,
           ask_webhook: AskWebhook, allowed_domains: Sequence[str] = ()) -> Decision:
    """The first rule that decides; with `allowed_domains` (requests.allowed_email_domains) an
    address outside them is never approved without a reviewer, whatever the rules say (a request
    stored before the list changed, or by hand)."""
    decision = _decide(request, model, approval, ask_webhook)
    domain = request.email.rsplit("@", 1)[-1].lower()
    if decision.decision == "approve" and allowed_domains and not in_domains(domain, allowed_domains):
        return Decision("review", f"{domain} is not one of requests.allowed_email_domains, so a reviewer decides",
                        f"{decision.decided_by}, outside the allowed domains")
    return decision


def _decide(request: KeyRequest, model: CatalogModel | None, approval: Approval,
            ask_webhook: AskWebhook) -> Decision:
    if model is None:
        return Decision("deny", f"model {request.model} is no longer in the catalog", "catalog")
    if model.auto_approve is True:
        return Decision("approve", f"{model.id} is approved automatically", "auto-approve")
    if model.auto_approve is False:
        return Decision("review", f"{model.id} always needs a reviewer", "auto-approve")
    for number, rule in enumerate(approval.rules, start=1):
        if isinstance(rule, MatchRule):
            if _matches(rule, request):
                reason = rule.reason or f"matched approval rule {number}"
                return Decision(rule.decision, reason, f"rule {number}")
        else:
            answer = ask_webhook(rule, request)
            if answer is not None:
                return dataclasses.replace(answer, decided_by=f"webhook rule {number}")
    return Decision(approval.default, f"no rule decided; the default is to {approval.default}", "default")
