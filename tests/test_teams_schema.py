"""Team access files: the three shapes teams already have, which limit wins, and bad files that
fail with the file, the field and the reason (and change nothing). Also the CLI (PR check)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.domain import team as teamdomain
from shared.domain.team import (
    MAX_FILE_BYTES,
    KaitoEntry,
    TeamCatalog,
    TeamFileError,
    check_unique,
    parse,
    workspace_name,
)
from shared.teams.__main__ import main as cli_main
from shared.teams.__main__ import read_file
from tests.teams_fixtures import ROOT, SEED_EXAMPLE, catalog_file, per_model_file

SOURCE = "developer-requests/alpha/access.yaml"


def problems(text: str, catalog: TeamCatalog, source: str = SOURCE) -> list[str]:
    with pytest.raises(TeamFileError) as caught:
        parse(text, source, catalog)
    return [str(issue) for issue in caught.value.issues]


# --- the three shapes -------------------------------------------------------------------------------


def test_the_seed_example_validates_verbatim(catalog):
    spec = parse(SEED_EXAMPLE, SOURCE, catalog)
    assert (spec.name, spec.display_name, spec.owner, spec.cost_center) == (
        "alpha", "AI Access - Team Alpha", "alpha-lead@contoso.com", "CC-12345")
    assert spec.shape == "documented"
    [grant] = spec.models
    assert (grant.name, grant.kind, grant.counter) == ("gpt-4o", "foundry", "team")
    assert (grant.limits.tokens_per_minute, grant.limits.daily_token_quota) == (5000, 1_000_000)
    assert spec.kaito == ()
    assert any("shares the team-wide limits" in note for note in spec.notes)


def test_per_model_shape_and_the_model_limit_wins(catalog):
    spec = parse(per_model_file(), "developer-requests/beta/access.yaml", catalog)
    assert spec.shape == "per-model"
    by_name = {g.name: g for g in spec.models}
    gpt4o, mini, phi = by_name["gpt-4o"], by_name["gpt-4o-mini"], by_name["phi-3-mini"]
    assert (gpt4o.limits.tokens_per_minute, gpt4o.limits.daily_token_quota, gpt4o.counter) == (2000, 200_000, "model")
    # gpt-4o-mini sets its rate only: its quota is the team-wide one, counted for it alone.
    assert (mini.limits.tokens_per_minute, mini.limits.daily_token_quota, mini.counter) == (8000, 1_000_000, "model")
    assert mini.limit_sources == {"tokensPerMinute": "model", "dailyTokenQuota": "team"}
    # The workspace entry has no limits: it shares the team-wide ones.
    assert (phi.kind, phi.counter, phi.preset, phi.instance_type) == (
        "kaito", "team", "phi-3-mini-4k-instruct", "Standard_NC6s_v3")
    assert phi.limits.tokens_per_minute == 5000
    notes = "\n".join(spec.notes)
    assert "tokensPerMinute 2,000 from the model entry overrides the team-wide 5,000" in notes
    assert "dailyTokenQuota 200,000 from the model entry overrides the team-wide 1,000,000" in notes
    assert "dailyTokenQuota 1,000,000 taken from the team-wide limits" in notes
    assert list(spec.workspaces()) == ["beta-phi-3-mini-4k-instruct"]


def test_catalog_shape(catalog):
    spec = parse(catalog_file(), "developer-requests/gamma/access.yaml", catalog)
    assert spec.shape == "catalog"
    assert spec.cost_center == "4711"  # a number in YAML, kept as text
    llama = spec.kaito[0]
    assert (llama.name, llama.preset, llama.instance_type) == ("llama-3-1-8b", "llama-3.1-8b-instruct",
                                                              "Standard_NC24ads_A100_v4")
    assert (llama.limits.tokens_per_minute, llama.limits.daily_token_quota, llama.counter) == (1000, 50_000, "model")
    # Dots are not allowed in a Workspace (Service) name: the preset is slugged.
    assert list(spec.workspaces()) == ["gamma-llama-3-1-8b-instruct"]
    assert spec.limits is None


def test_shapes_mixed_and_plain_names_in_the_catalog_shape(catalog):
    text = """
team: {name: delta, owner: d@contoso.com}
models:
  foundry: [gpt-4o, {name: gpt-4o-mini, dailyTokenQuota: 10}]
limits: {tokensPerMinute: 100}
"""
    spec = parse(text, "teams/delta.yaml", catalog)  # not access.yaml: no folder rule
    mini = {g.name: g for g in spec.models}["gpt-4o-mini"]
    assert (mini.limits.tokens_per_minute, mini.limits.daily_token_quota) == (100, 10)
    assert spec.display_name == "Team delta"


def test_a_team_wide_limit_no_model_uses_is_noted(catalog):
    text = """
team: {name: eps, owner: e@contoso.com}
models: {foundry: [{name: gpt-4o, tokensPerMinute: 1, dailyTokenQuota: 2}]}
limits: {tokensPerMinute: 100}
"""
    spec = parse(text, "x.yaml", catalog)
    assert any("apply to no model" in note for note in spec.notes)


def test_disabled_sections_are_noted_not_dropped_silently(catalog):
    text = SEED_EXAMPLE.replace("  kaito:\n    enabled: false",
                                "  kaito:\n    enabled: false\n    workspaces: [{name: phi-3-mini}]")
    spec = parse(text, SOURCE, catalog)
    assert spec.kaito == ()
    assert any("models.kaito is disabled" in note and "phi-3-mini" in note for note in spec.notes)


def test_equivalent_files_have_one_fingerprint(catalog):
    a = parse(SEED_EXAMPLE, SOURCE, catalog)
    b = parse(SEED_EXAMPLE.replace("      - gpt-4o", "      - gpt-4o\n"), SOURCE, catalog)
    assert a.fingerprint() == b.fingerprint()
    c = parse(SEED_EXAMPLE.replace("5000", "5001"), SOURCE, catalog)
    assert c.fingerprint() != a.fingerprint()


# --- bad files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, reason", [
    ("Alpha", "write 'alpha'"),
    ("team_alpha", "is not a DNS label"),
    ("1alpha", "start with a letter"),
    ("alpha-", "is not a DNS label"),
])
def test_bad_team_names(catalog, name, reason):
    found = problems(SEED_EXAMPLE.replace("name: alpha", f"name: {name}"), catalog, "x.yaml")
    assert any(line.startswith("x.yaml: team.name: ") and reason in line for line in found), found


def test_team_name_length_bound_by_the_longest_preset(catalog):
    limit, why = catalog.max_team_name_length()
    assert limit == 40 and "phi-3-mini-4k-instruct" in why  # 63 - 1 - 22
    ok = "a" * limit
    parse(SEED_EXAMPLE.replace("name: alpha", f"name: {ok}"), "x.yaml", catalog)
    found = problems(SEED_EXAMPLE.replace("name: alpha", f"name: {ok}b"), catalog, "x.yaml")
    assert found == [f"x.yaml: team.name: is 41 characters; at most 40 fit {why}"]
    assert len(workspace_name(ok, "phi-3-mini-4k-instruct")) == 63
    # Without KAITO models the Kubernetes label bound (63) is the tightest.
    assert TeamCatalog(foundry=("gpt-4o",)).max_team_name_length()[0] == 63
    long_preset = TeamCatalog(foundry=(), kaito=(KaitoEntry("x", "p" * 40, "Standard_X"),))
    assert long_preset.max_team_name_length()[0] == 22


def test_unknown_models(catalog):
    found = problems(SEED_EXAMPLE.replace("- gpt-4o", "- gpt-4-turbo"), catalog)
    assert len(found) == 1
    assert found[0].startswith(f"{SOURCE}: models.foundry.models[0]: 'gpt-4-turbo' is not a model in the catalog")
    kaito = problems(catalog_file().replace("llama-3-1-8b", "falcon-180b"), catalog, "g.yaml")
    assert kaito[0].startswith("g.yaml: models.kaito[0].name: 'falcon-180b' is not a KAITO model in the catalog")


@pytest.mark.parametrize("value, reason", [
    ("-5", "must be greater than 0, not -5"),
    ("0", "must be greater than 0, not 0"),
    ("'5000'", "must be a whole number greater than 0, not '5000'"),
    ("1.5", "must be a whole number greater than 0, not 1.5"),
    ("true", "must be a whole number greater than 0, not true"),
])
def test_limits_must_be_positive_whole_numbers(catalog, value, reason):
    found = problems(SEED_EXAMPLE.replace("tokensPerMinute: 5000", f"tokensPerMinute: {value}"), catalog)
    assert found == [f"{SOURCE}: limits.tokensPerMinute: {reason}"]


def test_negative_per_model_limit_names_its_path(catalog):
    found = problems(per_model_file().replace("tokensPerMinute: 2000", "tokensPerMinute: -1"), catalog,
                     "developer-requests/beta/access.yaml")
    assert found == ["developer-requests/beta/access.yaml: models.foundry.models[0].tokensPerMinute: "
                     "must be greater than 0, not -1"]


def test_a_model_without_any_limit_is_an_error(catalog):
    text = SEED_EXAMPLE.split("limits:")[0]
    assert problems(text, catalog) == [
        f"{SOURCE}: models.foundry.models[0]: gpt-4o has no limit: give it tokensPerMinute and/or "
        "dailyTokenQuota, or set team-wide limits: {tokensPerMinute, dailyTokenQuota}"]


def test_unknown_keys_are_refused_with_a_hint(catalog):
    text = SEED_EXAMPLE.replace("  dailyTokenQuota: 1000000", "  tokensPerDay: 1000000\n  burst: 3")
    found = problems(text, catalog)
    assert f"{SOURCE}: limits.tokensPerDay: unknown key; write dailyTokenQuota instead" in found
    assert any(line.startswith(f"{SOURCE}: limits.burst: unknown key; allowed here: tokensPerMinute, "
                               "dailyTokenQuota") for line in found)
    top = problems(SEED_EXAMPLE + "apiVersion: v1\n", catalog)
    assert top == [f"{SOURCE}: apiVersion: unknown key; allowed here: team, models, limits"]


def test_older_kaito_shape_without_models_says_how_to_update(catalog):
    found = problems(SEED_EXAMPLE.replace("kaito:\n    enabled: false", "kaito:\n    enabled: true"), catalog)
    assert len(found) == 1 and found[0].startswith(f"{SOURCE}: models.kaito: kaito is enabled but names no model")
    assert "workspaces: [{name: phi-3-mini}]" in found[0]


def test_instance_type_other_than_the_catalog_is_refused(catalog):
    text = per_model_file().replace("Standard_NC6s_v3", "Standard_ND96asr_v4")
    found = problems(text, catalog, "developer-requests/beta/access.yaml")
    assert found == ["developer-requests/beta/access.yaml: models.kaito.workspaces[0].instanceType: "
                     "'Standard_ND96asr_v4' is not the catalog's instance type for phi-3-mini (Standard_NC6s_v3); "
                     "the catalog decides the GPU: remove instanceType from the file"]


def test_owner_must_be_an_email_and_a_model_listed_twice(catalog):
    found = problems(SEED_EXAMPLE.replace("alpha-lead@contoso.com", "alpha lead")
                     .replace("      - gpt-4o", "      - gpt-4o\n      - gpt-4o"), catalog)
    assert found[0].startswith(f"{SOURCE}: team.owner: is not a valid email address")
    assert found[1] == (f"{SOURCE}: models.foundry.models[1]: gpt-4o is granted twice "
                        "(also at models.foundry.models[0]): list it once")


@pytest.mark.parametrize("text, reason", [
    ("- team: alpha\n", "(top level): must be a mapping with team and models, not a list"),
    ("just text\n", "(top level): must be a mapping with team and models, not a str"),
    ("", "(file): is empty"),
    ("team: [\n", "(file): not valid YAML at line 2"),
    ("team: {name: a}\nteam: {name: b}\n", "(file): not valid YAML at line 2, column 1: the key 'team' is given twice"),
])
def test_yaml_that_is_not_a_mapping(catalog, text, reason):
    found = problems(text, catalog)
    assert len(found) == 1 and found[0].startswith(f"{SOURCE}: {reason}"), found


def test_folder_must_match_and_two_files_one_team(catalog):
    found = problems(SEED_EXAMPLE, catalog, "developer-requests/beta/access.yaml")
    assert found == ["developer-requests/beta/access.yaml: team.name: is 'alpha' but the folder is 'beta': the "
                     "folder name must match team.name (rename the folder to alpha/ or set team.name: beta)"]
    a = parse(SEED_EXAMPLE, "teams/a.yaml", catalog)
    b = parse(SEED_EXAMPLE, "teams/b.yaml", catalog)
    assert [str(i) for i in check_unique([("teams/a.yaml", a), ("teams/b.yaml", b)])] == [
        "teams/a.yaml: team.name: team 'alpha' is also claimed by teams/b.yaml; one team, one file",
        "teams/b.yaml: team.name: team 'alpha' is also claimed by teams/a.yaml; one team, one file"]


def test_a_5_mb_file_is_refused_without_being_parsed(catalog, tmp_path, monkeypatch):
    big = tmp_path / "developer-requests" / "alpha" / "access.yaml"
    big.parent.mkdir(parents=True)
    big.write_bytes(SEED_EXAMPLE.encode() + b"#" * (5 * 1024 * 1024))

    def no_yaml(*args, **kwargs):
        raise AssertionError("YAML parsed")

    monkeypatch.setattr(teamdomain.yaml, "load", no_yaml)
    reads: list[int] = []
    real_open = type(big).open

    def counting_open(self, *args, **kwargs):
        handle = real_open(self, *args, **kwargs)
        real_read = handle.read

        def read(size=-1):
            data = real_read(size)
            reads.append(len(data))
            return data

        handle.read = read
        return handle

    monkeypatch.setattr(type(big), "open", counting_open)
    with pytest.raises(TeamFileError) as caught:
        read_file(big)
    assert sum(reads) == MAX_FILE_BYTES + 1  # never more than the limit and one byte
    [issue] = caught.value.issues
    assert issue.field == "(file)" and f"is {big.stat().st_size:,} bytes" in issue.reason
    assert "at most 65,536 bytes" in issue.reason
    # The same text handed over directly (as the HTTP body after its own check) is refused too.
    with pytest.raises(TeamFileError, match="at most 65,536 bytes"):
        parse(big.read_text(), SOURCE, catalog)


# --- the command line --------------------------------------------------------------------------------


def write(root, relative: str, text: str):
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_cli_exit_codes_and_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONFIG_FILE", str(ROOT / "config.yaml"))
    repo = tmp_path / "developer-requests"
    write(repo, "alpha/access.yaml", SEED_EXAMPLE)
    write(repo, "beta/access.yaml", per_model_file())
    write(repo, "gamma/access.yml", catalog_file())
    assert cli_main(["validate", str(repo)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "3 file(s) checked: ok" in err

    write(repo, "delta/access.yaml", SEED_EXAMPLE.replace("name: alpha", "name: Delta"))
    write(repo, "epsilon/access.yaml", "- not a mapping\n")
    write(repo, "zeta/access.yaml", SEED_EXAMPLE.replace("name: alpha", "name: zeta").replace("5000", "-1"))
    assert cli_main(["validate", str(repo)]) == 1
    lines = capsys.readouterr().out.splitlines()
    base = repo.as_posix()
    assert lines == [
        f"{base}/delta/access.yaml: team.name: 'Delta' is not a DNS label: use lowercase letters, digits and '-', "
        "start with a letter, end with a letter or digit (write 'delta')",
        f"{base}/epsilon/access.yaml: (top level): must be a mapping with team and models, not a list",
        f"{base}/zeta/access.yaml: limits.tokensPerMinute: must be greater than 0, not -1",
    ]


def test_cli_two_files_one_team_and_missing_paths(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONFIG_FILE", str(ROOT / "config.yaml"))
    a = write(tmp_path, "teams/a.yaml", SEED_EXAMPLE)
    b = write(tmp_path, "teams/b.yaml", SEED_EXAMPLE)
    assert cli_main(["validate", str(a), str(b), str(tmp_path / "missing.yaml")]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert f"{tmp_path.as_posix()}/missing.yaml: (file): does not exist" in lines
    assert f"{a.as_posix()}: team.name: team 'alpha' is also claimed by {b.as_posix()}; one team, one file" in lines


def test_cli_as_a_module_with_plan(tmp_path):
    path = write(tmp_path, "developer-requests/alpha/access.yaml", SEED_EXAMPLE)
    result = subprocess.run([sys.executable, "-m", "shared.teams", "plan", str(path), "--api-ids", "azure-openai"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Team alpha (documented shape): create, compared with nothing stored" in result.stdout
    assert "+ create    APIM product policy    product-alpha/policy" in result.stdout
    assert "product-alpha/apis/azure-openai" in result.stdout
    bad = write(tmp_path, "developer-requests/beta/access.yaml", SEED_EXAMPLE)
    result = subprocess.run([sys.executable, "-m", "shared.teams", "validate", str(bad)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout.startswith(f"{bad.as_posix()}: team.name: is 'alpha' but the folder is 'beta'")
