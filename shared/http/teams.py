"""Team access endpoints (the GitOps flow): validate a file, submit or update a team, delete it,
read its status. One Functions function per endpoint.

- `POST /api/teams/validate`: anonymous on purpose, so a pull request's check can call it without
  a secret (pull requests from forks get none). It changes nothing and never shows a key; its plan
  shows the team's stored grant (models, limits, owner), which is what the repository's main
  branch already holds, next to what the file asks for.
- `PUT /api/teams/{name}`, `DELETE /api/teams/{name}`: admin authentication (shared/http/auth.py):
  the CI job that merges teams' files sends ADMIN_API_KEY; Basic and Entra ID work too.
- `GET /api/teams/{name}`: admin authentication as well: the status holds operational detail
  (the last APIM error, what is provisioned), though never a key.
- `GET /api/teams`: admin; every stored team, paged, with the content hash of its stored file,
  its state, its last sync and the source path and commit it came from: what
  `python -m shared.teams sync` compares a folder with. `DELETE ...?dryRun=true` answers the
  plan of a deletion and changes nothing.
- `POST /api/teams/{name}/rotate`: admin; the timer rotates the team's keys without downtime (the
  unused key is regenerated and written to `{team}-api-key`, the owner is told to switch, and the
  other key is regenerated after `provisioning.rotation_grace`). 202; 404 for an unknown team;
  409 unless the team is ready and no rotation runs (a failed rotation is resumed).

The body is the access.yaml text (`Content-Type: application/yaml` or `text/yaml`, the file's
path optionally in `?path=` and its git commit in `?commit=`), or JSON `{"path": ..., "content":
..., "commit": ...}`. At most 64 KiB of file (413).
The path lets the folder rule apply: `developer-requests/{team}/access.yaml` must name team {team}.
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any, NamedTuple

import azure.functions as func

from shared import context
from shared.http.auth import authenticate
from shared.http.responses import HttpError, handles_errors, json_response
from shared.http.writes import JSON_ONLY, check_write

if TYPE_CHECKING:
    from shared.domain.team import TeamCatalog, TeamFileError
    from shared.services.team_plan import Plan

log = logging.getLogger(__name__)
bp = func.Blueprint()
ANONYMOUS = func.AuthLevel.ANONYMOUS  # validate is public; the others authenticate in the app

YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"}
# The team modules (schema models, policy, templates) load on the first team call, not on every
# cold start: most invocations of this app never touch a team. Same value as domain.team's.
MAX_FILE_BYTES = 64 * 1024
# JSON carries the file escaped (quotes, newlines), so its frame may be larger than the file.
MAX_JSON_BYTES = 2 * MAX_FILE_BYTES + 4096
COMMIT = re.compile(r"^[0-9a-fA-F]{7,64}$")  # SHA-1 or SHA-256, full or abbreviated
DEFAULT_LIMIT, MAX_LIMIT = 100, 500


def _teams():
    from shared.services import teams

    return teams


def _too_large(limit: int) -> HttpError:
    return HttpError(413, f"The access file must be at most {MAX_FILE_BYTES:,} bytes (64 KiB); it was not read",
                     {"limit_bytes": limit})


class Upload(NamedTuple):
    source: str  # the file's path in the repository, or "(body)"
    text: str
    commit: str | None  # the git commit it was sent from, when the caller says


def _commit(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not COMMIT.match(value):
        raise HttpError(422, "Invalid request: commit: must be a git commit id (7 to 64 hex digits)",
                        [{"field": "commit", "reason": "7 to 64 hex digits"}])
    return value.lower()


def _file_of(req: func.HttpRequest) -> Upload:
    """(source path, text, commit) from a YAML or JSON body; sizes checked before anything is parsed."""
    content_type = (req.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    is_json = content_type == "application/json" or content_type.endswith("+json")
    if content_type not in YAML_TYPES and not is_json:
        raise HttpError(415, "Send the access.yaml as Content-Type: application/yaml, or JSON "
                             '{"path": ..., "content": ...} as application/json',
                        {"content_type": content_type or None})
    limit = MAX_JSON_BYTES if is_json else MAX_FILE_BYTES
    declared = req.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = req.get_body() or b""
    if len(body) > limit:
        raise _too_large(limit)
    if not is_json:
        source = (req.params.get("path") or "").strip() or "(body)"
        commit = _commit(req.params.get("commit"))
        try:
            return Upload(source, body.decode("utf-8-sig"), commit)
        except UnicodeDecodeError:
            raise HttpError(400, "The body is not UTF-8 text") from None
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HttpError(400, f"The body is not valid JSON: {exc}") from None
    except RecursionError:  # e.g. 16,000 "[": the parser's stack, not a server error
        raise HttpError(400, "The body is not valid JSON: it nests too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("content"), str):
        raise HttpError(422, "Invalid request: content: the access.yaml text is required as a string",
                        [{"field": "content", "reason": "required string"}])
    unknown = sorted(set(data) - {"path", "content", "commit"})
    if unknown:
        raise HttpError(422, f"Invalid request: unknown field(s) {', '.join(unknown)}; send path, content "
                             "and commit",
                        [{"field": name, "reason": "unknown field"} for name in unknown])
    path = data.get("path")
    if path is not None and (not isinstance(path, str) or len(path) > 1024):
        raise HttpError(422, "Invalid request: path: must be a string of at most 1024 characters",
                        [{"field": "path", "reason": "string, at most 1024 characters"}])
    if len(data["content"].encode("utf-8")) > MAX_FILE_BYTES:
        raise _too_large(MAX_FILE_BYTES)
    return Upload((path or "").strip() or "(body)", data["content"], _commit(data.get("commit")))


def _invalid(error: TeamFileError) -> HttpError:
    first = str(error.issues[0])
    more = len(error.issues) - 1
    message = first + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")
    return HttpError(422, message, {"valid": False, "errors": [i.as_dict() for i in error.issues],
                                    "lines": [str(i) for i in error.issues]})


def _catalog() -> TeamCatalog:
    from shared.domain.team import TeamCatalog

    return TeamCatalog.from_config(context.config())


def _team_param(req: func.HttpRequest) -> str:
    from shared.domain.team import TEAM_NAME

    name = req.route_params.get("name", "")
    if not TEAM_NAME.match(name) or len(name) > 63:
        raise HttpError(404, f"No team named {name[:80]!r}")
    return name


def _check(source: str, text: str, reveal_stored: bool = True) -> tuple[Any, Plan]:
    from shared.domain.team import TeamFileError

    try:
        return _teams().check(text, source, _catalog(), context.team_store(), context.team_api_ids(),
                              reveal_stored=reveal_stored)
    except TeamFileError as exc:
        raise _invalid(exc) from None


@bp.function_name("teams_validate")
@bp.route(route="api/teams/validate", methods=["POST"], auth_level=ANONYMOUS)
@handles_errors
def teams_validate(req: func.HttpRequest) -> func.HttpResponse:
    # Anonymous callers see the plan without the stored owner, cost centre and last error; a caller
    # that sends admin credentials sees them (wrong credentials are a 401, as on the other endpoints).
    credentials = any(req.headers.get(h) for h in ("authorization", "x-functions-key", "x-api-key")) or (
        context.settings().admin_trust_app_service_auth and bool(req.headers.get("x-ms-client-principal")))
    if credentials:
        authenticate(req, context.settings())
    source, text, _ = _file_of(req)
    spec, plan = _check(source, text, reveal_stored=credentials)
    return json_response({"valid": True, "team": spec.name, "message": f"{source} is valid: team {spec.name}, "
                                                                       f"{plan.action}", "plan": plan.as_dict()})


@bp.function_name("teams_put")
@bp.route(route="api/teams/{name}", methods=["PUT"], auth_level=ANONYMOUS)
@handles_errors
def teams_put(req: func.HttpRequest) -> func.HttpResponse:
    principal = authenticate(req, context.settings())
    check_write(req, context.settings(), JSON_ONLY | YAML_TYPES)  # YAML is no form's type either
    name = _team_param(req)
    source, text, commit = _file_of(req)
    spec, plan = _check(source, text)
    if spec.name != name:
        reason = f"is {spec.name!r} but the URL names team {name!r}"
        raise HttpError(422, f"{source}: team.name: {reason}",
                        {"valid": False, "errors": [{"path": source, "field": "team.name", "reason": reason}]})
    from shared.domain.team import content_hash

    record, outcome = _teams().submit(context.team_store(), spec, None if source == "(body)" else source,
                                      principal.audit_name, content_hash=content_hash(text), commit=commit)
    answer = {"team": record.name, "generation": record.generation, "phase": record.phase,
              "outcome": outcome, "changed": outcome != "unchanged", "content_sha256": record.content_hash,
              "source": record.source, "commit": record.commit, "plan": plan.as_dict()}
    if outcome == "unchanged":
        return json_response({**answer, "message": f"Team {name} is unchanged"}, 200)
    what = {"created": "accepted", "updated": "updated", "retried": "will be retried"}[outcome]
    return json_response({**answer, "message": f"Team {name} {what} (generation {record.generation}); "
                                               "the next timer tick applies it"},
                         201 if outcome == "created" else 202, {"Location": f"/api/teams/{name}"})


@bp.function_name("teams_delete")
@bp.route(route="api/teams/{name}", methods=["DELETE"], auth_level=ANONYMOUS)
@handles_errors
def teams_delete(req: func.HttpRequest) -> func.HttpResponse:
    """`?dryRun=true` answers 200 with the plan of the deletion and changes nothing."""
    from shared.services.team_plan import deletion

    principal = authenticate(req, context.settings())
    check_write(req, context.settings())
    name = _team_param(req)
    store = context.team_store()
    if _flag(req, "dryRun"):
        stored = store.get(name)
        if stored is None:
            raise HttpError(404, f"No team named {name}")
        return json_response({"team": name, "dry_run": True, "generation": stored.generation,
                              "phase": stored.phase, "plan": deletion(stored, context.team_api_ids()).as_dict(),
                              "message": f"Deleting team {name} would remove what the plan lists; nothing changed"})
    record = _teams().request_delete(store, name, principal.audit_name)
    return json_response({"team": name, "generation": record.generation, "phase": record.phase,
                          "plan": deletion(record, context.team_api_ids()).as_dict(),
                          "message": f"Team {name} will be removed by the next timer tick: its subscription, "
                                     "product, keys Secret and workspaces"}, 202)


@bp.function_name("teams_rotate")
@bp.route(route="api/teams/{name}/rotate", methods=["POST"], auth_level=ANONYMOUS)
@handles_errors
def teams_rotate(req: func.HttpRequest) -> func.HttpResponse:
    """Record a key rotation for the timer; no body. Never answers a key."""
    from shared.services.ports import NotFound

    principal = authenticate(req, context.settings())
    check_write(req, context.settings())
    name = _team_param(req)
    teams = _teams()
    try:
        record, outcome = teams.request_rotation(context.team_store(), name, principal.audit_name)
    except NotFound:
        raise HttpError(404, f"No team named {name}") from None
    except teams.RotationRefused as exc:
        raise HttpError(409, str(exc)) from None
    grace = context.config().provisioning.rotation_grace
    message = (f"Key rotation of team {name} {'resumed' if outcome == 'resumed' else 'requested'}: the next timer "
               f"tick regenerates the key not in use and tells the owner; the key in use keeps working for "
               f"{grace} after that")
    return json_response({"team": name, "outcome": outcome, "phase": record.phase,
                          "requested_at": record.rotate_requested_at.isoformat() if record.rotate_requested_at
                          else None, "rotation_grace": grace, "message": message},
                         202, {"Location": f"/api/teams/{name}"})


@bp.function_name("teams_list")
@bp.route(route="api/teams", methods=["GET"], auth_level=ANONYMOUS)
@handles_errors
def teams_list(req: func.HttpRequest) -> func.HttpResponse:
    """Every stored team, paged (`limit`, `continue`): content hash, state, last sync, source, commit."""
    from shared.services.ports import InvalidArgument

    authenticate(req, context.settings())
    raw = req.params.get("limit")
    if raw is not None and (not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT):
        raise HttpError(422, f"Invalid limit: must be a whole number from 1 to {MAX_LIMIT}",
                        [{"field": "limit", "reason": f"1..{MAX_LIMIT}"}])
    try:
        page = _teams().list_teams(context.team_store(), int(raw) if raw else DEFAULT_LIMIT,
                                   req.params.get("continue") or None)
    except InvalidArgument:
        raise HttpError(422, "Invalid continue token: it may have expired; list again from the start",
                        [{"field": "continue", "reason": "not recognised"}]) from None
    return json_response({**page, "count": len(page["teams"])})


def _flag(req: func.HttpRequest, name: str) -> bool:
    value = (req.params.get(name) or "").strip().lower()
    if value in ("", "false", "0", "no"):
        return False
    if value in ("true", "1", "yes", "all"):  # `all` as in Kubernetes' dryRun=All
        return True
    raise HttpError(422, f"Invalid {name}: use true or false", [{"field": name, "reason": "true or false"}])


@bp.function_name("teams_get")
@bp.route(route="api/teams/{name}", methods=["GET"], auth_level=ANONYMOUS)
@handles_errors
def teams_get(req: func.HttpRequest) -> func.HttpResponse:
    authenticate(req, context.settings())
    return json_response(_teams().status(context.team_store(), _team_param(req)))
