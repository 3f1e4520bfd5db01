"""The team's APIM product policy, read back by parsing the XML: llm-token-limit attributes, one
counter per model with limits of its own, the team-wide counter, 403 ModelNotAuthorized otherwise,
the model read from deployment-id or the body, escaping, and rawxml vs xml."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree

import pytest

from shared.domain import policy
from shared.domain.team import Limits, ModelGrant, TeamSpec, parse
from tests.teams_fixtures import SEED_EXAMPLE, catalog_file, per_model_file

LIMIT_HEADERS = {
    "estimate-prompt-tokens": "true",
    "remaining-tokens-header-name": "x-ratelimit-remaining-tokens",
    "remaining-quota-tokens-header-name": "x-ratelimit-remaining-quota-tokens",
    "tokens-consumed-header-name": "x-tokens-consumed",
}
MODEL_VAR = '(string)context.Variables["requested-model"]'


def parsed(spec: TeamSpec) -> ElementTree.Element:
    rendered = policy.render(spec)
    assert rendered.format == "rawxml"
    assert policy.raw_to_xml(rendered.rawxml) == rendered.xml
    return ElementTree.fromstring(rendered.xml)


def whens(root: ElementTree.Element) -> list[ElementTree.Element]:
    choose = root.find("inbound/choose")
    assert choose is not None
    return choose.findall("when")


def test_documented_shape_one_team_counter(catalog):
    root = parsed(parse(SEED_EXAMPLE, "developer-requests/alpha/access.yaml", catalog))
    assert [child.tag for child in root] == ["inbound", "backend", "outbound", "on-error"]
    assert [child.tag for child in root.find("inbound")] == ["base", "set-variable", "choose"]
    [when] = whens(root)
    assert when.get("condition") == f'@({MODEL_VAR} == "gpt-4o")'
    limit = when.find("llm-token-limit")
    assert limit.attrib == {"counter-key": "@(context.Subscription.Id)", "tokens-per-minute": "5000",
                            "token-quota": "1000000", "token-quota-period": "Daily", **LIMIT_HEADERS}


def test_per_model_limits_each_model_its_own_counter(catalog):
    spec = parse(per_model_file(), "developer-requests/beta/access.yaml", catalog)
    root = parsed(spec)
    found = {w.get("condition"): w.find("llm-token-limit").attrib for w in whens(root)}
    assert found[f'@({MODEL_VAR} == "gpt-4o")'] == {
        "counter-key": '@(context.Subscription.Id + ":gpt-4o")', "tokens-per-minute": "2000",
        "token-quota": "200000", "token-quota-period": "Daily", **LIMIT_HEADERS}
    assert found[f'@({MODEL_VAR} == "gpt-4o-mini")'] == {
        "counter-key": '@(context.Subscription.Id + ":gpt-4o-mini")', "tokens-per-minute": "8000",
        "token-quota": "1000000", "token-quota-period": "Daily", **LIMIT_HEADERS}
    # The KAITO model shares the team-wide limits; a client may name it or its preset.
    shared = found[f'@({MODEL_VAR} == "phi-3-mini" || {MODEL_VAR} == "phi-3-mini-4k-instruct")']
    assert shared["counter-key"] == "@(context.Subscription.Id)"
    assert (shared["tokens-per-minute"], shared["token-quota"]) == ("5000", "1000000")
    assert policy.describe(policy.render(spec).xml)["gpt-4o"]["tokens-per-minute"] == "2000"


def test_a_model_not_granted_gets_403_model_not_authorized(catalog):
    root = parsed(parse(catalog_file(), "developer-requests/gamma/access.yaml", catalog))
    response = root.find("inbound/choose/otherwise/return-response")
    assert response.find("set-status").attrib == {"code": "403", "reason": "Forbidden"}
    header = response.find("set-header")
    assert header.get("name") == "Content-Type" and header.find("value").text == "application/json"
    body = json.loads(response.find("set-body").text)
    assert body["error"]["code"] == "ModelNotAuthorized"
    assert "gpt-4o, llama-3-1-8b, llama-3.1-8b-instruct" in body["error"]["message"]


def test_the_model_comes_from_deployment_id_else_the_body(catalog):
    root = parsed(parse(SEED_EXAMPLE, "developer-requests/alpha/access.yaml", catalog))
    variable = root.find("inbound/set-variable")
    assert variable.get("name") == "requested-model"
    expression = variable.get("value")
    assert expression.startswith("@{") and expression.endswith("}")
    assert 'MatchedParameters.GetValueOrDefault("deployment-id", "")' in expression
    assert 'As<JObject>(preserveContent: true)' in expression and 'body?["model"]' in expression
    # The choose comes after the variable it reads.
    inbound = [child.tag for child in root.find("inbound")]
    assert inbound.index("set-variable") < inbound.index("choose")


def test_only_the_limits_given_are_rendered():
    spec = TeamSpec(name="t", display_name="T", owner="o@example.com", shape="catalog", models=(
        ModelGrant(name="a", kind="foundry", limits=Limits(tokens_per_minute=10), counter="model"),
        ModelGrant(name="b", kind="foundry", limits=Limits(daily_token_quota=20), counter="model")))
    found = {w.find("llm-token-limit").get("counter-key"): w.find("llm-token-limit").attrib
             for w in whens(parsed(spec))}
    a, b = found['@(context.Subscription.Id + ":a")'], found['@(context.Subscription.Id + ":b")']
    assert a["tokens-per-minute"] == "10" and "token-quota" not in a and "token-quota-period" not in a
    assert b["token-quota"] == "20" and b["token-quota-period"] == "Daily" and "tokens-per-minute" not in b


def test_rawxml_keeps_expressions_verbatim_and_escapes_everything_else():
    spec = TeamSpec(name="t", display_name='R&D <AI> "Team"', owner="o@example.com", shape="catalog", models=(
        ModelGrant(name="gpt-4o", kind="foundry", limits=Limits(tokens_per_minute=10), counter="model"),))
    rendered = policy.render(spec)
    # APIM encodes rawxml expressions itself: ours must arrive as written, not pre-escaped.
    assert 'GetValueOrDefault("deployment-id", "")' in rendered.rawxml
    assert "As<JObject>" in rendered.rawxml
    assert "&quot;" not in rendered.rawxml.split("<choose>")[0].split("value=", 1)[1].split("/>")[0]
    # Outside expressions, user text is escaped in both forms.
    assert "R&amp;D &lt;AI&gt;" in rendered.rawxml and "R&D <AI>" not in rendered.rawxml
    # The xml form escapes the expressions too, and parses back to the same values.
    assert "As&lt;JObject&gt;" in rendered.xml and "&quot;deployment-id&quot;" in rendered.xml
    root = ElementTree.fromstring(rendered.xml)
    message = json.loads(root.find("inbound/choose/otherwise/return-response/set-body").text)["error"]["message"]
    assert message.startswith('R&D <AI> "Team" may not use this model')
    assert root.find("inbound/set-variable").get("value") == policy.MODEL_EXPRESSION


def test_unsafe_model_names_never_reach_an_expression():
    spec = TeamSpec(name="t", display_name="T", owner="o@example.com", shape="catalog", models=(
        ModelGrant(name='x") || true || ("', kind="foundry", limits=Limits(tokens_per_minute=1), counter="model"),))
    with pytest.raises(ValueError, match="cannot be placed in a policy expression"):
        policy.render(spec)


def test_raw_to_xml_handles_strings_with_parentheses_and_quotes():
    raw = ('<policies><inbound><set-variable name="v" value="@(&quot;x&quot;)" />'
           '<set-variable name="w" value="@{ return ")}\\"" + "(" ; }" /></inbound></policies>')
    root = ElementTree.fromstring(policy.raw_to_xml(raw))
    values = [v.get("value") for v in root.iter("set-variable")]
    assert values == ['@(&quot;x&quot;)', '@{ return ")}\\"" + "(" ; }']
