"""The APIM product policy for a team: `llm-token-limit` per model or per team, model allow-list.

Pure: `render(spec)` returns the policy in both of APIM's inline formats:

- `rawxml` (what is sent): policy expressions (`@(...)`, `@{...}`) written verbatim, as in the
  portal's editor. APIM encodes them itself; an expression XML-escaped by us would be escaped twice
  and no longer compile. Everything else (names, numbers, the 403 body) is XML-escaped.
- `xml`: the same document with the expressions XML-escaped too: well-formed XML that any parser
  reads (tests parse it), and what APIM's `xml` format expects. `raw_to_xml(rawxml) == xml`.

The document:

    <policies><inbound><base/>
      <set-variable name="requested-model"
                    value="@{ deployment-id of an Azure OpenAI route, else the JSON body's model }"/>
      <choose>
        <when condition="@(model is gpt-4o)">          one per model with limits of its own:
          <llm-token-limit counter-key="@(context.Subscription.Id + ":gpt-4o")" .../>
        </when>
        <when condition="@(model is one of ...)">      the models sharing the team-wide limits:
          <llm-token-limit counter-key="@(context.Subscription.Id)" .../>
        </when>
        <otherwise> 403 {"error": {"code": "ModelNotAuthorized", ...}} </otherwise>
      </choose>
    </inbound>...</policies>

Over the rate APIM answers 429, over the daily quota 403 (its own `llm-token-limit` behaviour).
Model names reach C# string literals, so only catalog-safe names are accepted (see SAFE_MODEL_NAME).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable
from xml.sax.saxutils import escape

from shared.domain.team import SAFE_MODEL_NAME, Limits, ModelGrant, TeamSpec

FORMAT = "rawxml"
MODEL_VARIABLE = "requested-model"
REMAINING_TOKENS_HEADER = "x-ratelimit-remaining-tokens"
REMAINING_QUOTA_HEADER = "x-ratelimit-remaining-quota-tokens"
TOKENS_CONSUMED_HEADER = "x-tokens-consumed"
QUOTA_PERIOD = "Daily"
NOT_AUTHORIZED_CODE = "ModelNotAuthorized"

_ATTRIBUTE_ESCAPES = {'"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}

# Which model the call is for: the route's deployment-id on Azure OpenAI routes
# (/openai/deployments/{deployment-id}/...), else the `model` of a JSON body (OpenAI-style routes).
# Lower-cased, as the conditions compare lower-cased names. A body that is not JSON reads as "".
MODEL_EXPRESSION = (
    '@{ string deployment = context.Request.MatchedParameters.GetValueOrDefault("deployment-id", ""); '
    'if (!string.IsNullOrEmpty(deployment)) { return deployment.ToLowerInvariant(); } '
    'try { JObject body = context.Request.Body?.As<JObject>(preserveContent: true); '
    'return ((string)body?["model"] ?? "").ToLowerInvariant(); } catch { return ""; } }'
)


@dataclasses.dataclass(frozen=True)
class Element:
    tag: str
    attributes: tuple[tuple[str, str], ...] = ()
    children: tuple[Element, ...] = ()
    text: str | None = None


@dataclasses.dataclass(frozen=True)
class RenderedPolicy:
    rawxml: str  # send this, with format "rawxml"
    xml: str  # the same, every expression escaped: parse this

    format: str = FORMAT


def _e(tag: str, *children: Element, text: str | None = None, **attributes: str) -> Element:
    return Element(tag, tuple((k.replace("_", "-"), v) for k, v in attributes.items()), tuple(children), text)


def _literal(name: str) -> str:
    """A model name as a C# string literal (lower-cased, as the variable is)."""
    if not SAFE_MODEL_NAME.match(name):
        raise ValueError(f"model name {name!r} cannot be placed in a policy expression")
    return '"' + name.lower() + '"'


def _condition(names: Iterable[str]) -> str:
    variable = f'(string)context.Variables["{MODEL_VARIABLE}"]'
    return "@(" + " || ".join(f"{variable} == {_literal(n)}" for n in names) + ")"


def _token_limit(counter_key: str, limits: Limits) -> Element:
    attributes = {"counter_key": counter_key}
    if limits.tokens_per_minute is not None:
        attributes["tokens_per_minute"] = str(limits.tokens_per_minute)
    if limits.daily_token_quota is not None:
        attributes["token_quota"] = str(limits.daily_token_quota)
        attributes["token_quota_period"] = QUOTA_PERIOD
    attributes.update(estimate_prompt_tokens="true",
                      remaining_tokens_header_name=REMAINING_TOKENS_HEADER,
                      remaining_quota_tokens_header_name=REMAINING_QUOTA_HEADER,
                      tokens_consumed_header_name=TOKENS_CONSUMED_HEADER)
    return _e("llm-token-limit", **attributes)


def model_counter_key(name: str) -> str:
    return f'@(context.Subscription.Id + ":{name.lower()}")'


TEAM_COUNTER_KEY = "@(context.Subscription.Id)"


def not_authorized_body(spec: TeamSpec) -> str:
    allowed = sorted({alias for grant in spec.models for alias in grant.aliases})
    return json.dumps({"error": {
        "code": NOT_AUTHORIZED_CODE,
        "message": f"{spec.display_name} may not use this model. Allowed models: {', '.join(allowed)}.",
    }})


def document(spec: TeamSpec) -> Element:
    if not spec.models:
        raise ValueError(f"team {spec.name} grants no model")
    whens: list[Element] = []
    own = [g for g in spec.models if g.counter == "model"]
    shared = [g for g in spec.models if g.counter == "team"]
    for grant in own:
        whens.append(_e("when", _token_limit(model_counter_key(grant.name), grant.limits),
                        condition=_condition(grant.aliases)))
    if shared:
        names = [alias for grant in shared for alias in grant.aliases]
        team_limits = _shared_limits(shared)
        whens.append(_e("when", _token_limit(TEAM_COUNTER_KEY, team_limits), condition=_condition(names)))
    otherwise = _e("otherwise", _e(
        "return-response",
        _e("set-status", code="403", reason="Forbidden"),
        _e("set-header", _e("value", text="application/json"), name="Content-Type", exists_action="override"),
        _e("set-body", text=not_authorized_body(spec)),
    ))
    return _e(
        "policies",
        _e("inbound", _e("base"), _e("set-variable", name=MODEL_VARIABLE, value=MODEL_EXPRESSION),
           _e("choose", *whens, otherwise)),
        _e("backend", _e("base")),
        _e("outbound", _e("base")),
        _e("on-error", _e("base")),
    )


def _shared_limits(shared: list[ModelGrant]) -> Limits:
    distinct = {g.limits for g in shared}
    if len(distinct) != 1:  # by construction they are the team-wide limits
        raise ValueError("models sharing the team counter have different limits")
    return distinct.pop()


def render(spec: TeamSpec) -> RenderedPolicy:
    # APIM replaces {{named-value}} anywhere in a policy: no text of the team's may bring one in
    # (the team reader refuses them; this is the last line). The JSON of the 403 body ends in "}}"
    # by itself, so the texts are checked, not the document.
    texts = [spec.name, spec.display_name, *(alias for grant in spec.models for alias in grant.aliases)]
    if any("{{" in text or "}}" in text for text in texts):
        raise ValueError(f"team {spec.name}: the policy would hold {{{{ or }}}}, which APIM reads as a named value")
    root = document(spec)
    return RenderedPolicy(rawxml=serialize(root, raw_expressions=True), xml=serialize(root, raw_expressions=False))


def is_expression(value: str) -> bool:
    return value.startswith("@(") or value.startswith("@{")


def serialize(root: Element, raw_expressions: bool) -> str:
    lines: list[str] = []
    _write(root, 0, raw_expressions, lines)
    return "\n".join(lines) + "\n"


def _attribute(value: str, raw_expressions: bool) -> str:
    if raw_expressions and is_expression(value):
        return f'"{value}"'
    return '"' + escape(value, _ATTRIBUTE_ESCAPES) + '"'


def _write(element: Element, depth: int, raw_expressions: bool, lines: list[str]) -> None:
    pad = "    " * depth
    attributes = "".join(f" {name}={_attribute(value, raw_expressions)}" for name, value in element.attributes)
    if element.text is not None:
        if element.children:
            raise ValueError("an element has either text or children here")
        lines.append(f"{pad}<{element.tag}{attributes}>{escape(element.text)}</{element.tag}>")
    elif not element.children:
        lines.append(f"{pad}<{element.tag}{attributes} />")
    else:
        lines.append(f"{pad}<{element.tag}{attributes}>")
        for child in element.children:
            _write(child, depth + 1, raw_expressions, lines)
        lines.append(f"{pad}</{element.tag}>")


# --- reading a rawxml policy back ----------------------------------------------------------------

_EXPRESSION_ATTRIBUTE = re.compile(r'=\s*"(?=@[({])')


def raw_to_xml(raw: str) -> str:
    """A `rawxml` policy as well-formed XML: each attribute value that is a policy expression gets
    its reserved characters escaped, as APIM does on receipt. (Expressions in element text are
    left alone: this app's policies put none there.)"""
    out: list[str] = []
    position = 0
    for match in _EXPRESSION_ATTRIBUTE.finditer(raw):
        start = match.end()
        if start < position:
            continue
        end = _expression_end(raw, start)
        if end >= len(raw) or raw[end] != '"':
            raise ValueError(f"policy expression at offset {start} does not end its attribute")
        out.append(raw[position:start])
        out.append(escape(raw[start:end], _ATTRIBUTE_ESCAPES))
        position = end
    out.append(raw[position:])
    return "".join(out)


def _expression_end(text: str, start: int) -> int:
    """The index just past the `)` or `}` closing the expression that starts at `start` (`@(`/`@{`),
    skipping C# string and character literals."""
    opening = text[start + 1]
    closing = ")" if opening == "(" else "}"
    depth, i = 0, start + 1
    while i < len(text):
        ch = text[i]
        if ch in "\"'":
            i = _literal_end(text, i)
            continue
        if ch == opening:
            depth += 1
        elif ch == closing:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError(f"policy expression at offset {start} is not closed")


def _literal_end(text: str, i: int) -> int:
    quote = text[i]
    verbatim = quote == '"' and i > 0 and text[i - 1] == "@"
    i += 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and not verbatim:
            i += 2
            continue
        if ch == quote:
            if verbatim and text[i + 1: i + 2] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    raise ValueError("unterminated literal in a policy expression")


# --- what a policy grants, read back (for tests and the status view) ---------------------------------


def describe(xml: str) -> dict[str, dict[str, str]]:
    """{condition model names: llm-token-limit attributes} from a policy in `xml` form."""
    import xml.etree.ElementTree as ElementTree

    root = ElementTree.fromstring(xml)
    found: dict[str, dict[str, str]] = {}
    for when in root.iter("when"):
        names = re.findall(r'== "([^"]+)"', when.get("condition", ""))
        limit = when.find("llm-token-limit")
        if limit is not None:
            found[",".join(names)] = dict(limit.attrib)
    return found

