"""Functions (ASP.NET Core) route templates, matched with werkzeug's router.

Templates use `{id}`, `{id?}` / `{id=default}` (trailing, optional), `{id:int}`-style constraints
and `{*path}` catch-alls. Werkzeug has no optional segments, so a template with trailing optional
parameters becomes one rule per length; its parameter names must be identifiers (Functions allows
`{deployment-id}`), so rules use `p0, p1, ...` and matches are mapped back. Route parameters stay
strings, as the worker hands them over.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from werkzeug.routing import BaseConverter, Map, Rule, ValidationError

from .functions import FunctionEntry

log = logging.getLogger("local_host")

# Constraints that decide what the segment looks like, as regexes.
_TYPE_REGEX = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "alpha": r"[A-Za-z]+",
    "bool": r"(?i:true|false)",
    "guid": r"(?i:\{?[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\}?)",
    "decimal": r"-?(?:\d+\.?\d*|\.\d+)",
    "double": r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?",
    "float": r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?",
}
# Constraints on the value, checked after the match. (werkzeug then answers 404 without trying
# other rules, where ASP.NET would try them: close enough for a dev host.)
_CHECKS: dict[str, Callable[[str, list[str]], bool]] = {
    "min": lambda v, a: (n := _num(v)) is not None and n >= float(a[0]),
    "max": lambda v, a: (n := _num(v)) is not None and n <= float(a[0]),
    "range": lambda v, a: (n := _num(v)) is not None and float(a[0]) <= n <= float(a[1]),
    "minlength": lambda v, a: len(v) >= int(a[0]),
    "maxlength": lambda v, a: len(v) <= int(a[0]),
    "length": lambda v, a: len(v) == int(a[0]) if len(a) == 1 else int(a[0]) <= len(v) <= int(a[1]),
    "required": lambda v, a: v != "",
}
_TOLERATED = {"datetime", "nonfile", "file"}


def _num(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class Param:
    name: str
    constraints: tuple[tuple[str, tuple[str, ...]], ...] = ()
    optional: bool = False
    default: str | None = None
    catch_all: bool = False


@dataclass(frozen=True)
class Target:
    """What a matched rule leads to: the function, rule names -> template names, defaults."""

    entry: FunctionEntry
    names: tuple[tuple[str, str], ...]
    defaults: tuple[tuple[str, str], ...]

    def route_params(self, values: dict[str, str]) -> dict[str, str]:
        params = dict(self.defaults)
        params.update({name: values[rule_name] for rule_name, name in self.names if rule_name in values})
        return params


def parse_segment(segment: str) -> list[str | Param]:
    """Split one path segment into literal text and parameters (`{{`/`}}` are literal braces)."""
    parts: list[str | Param] = []
    literal, i = "", 0
    while i < len(segment):
        ch = segment[i]
        if segment.startswith("{{", i) or segment.startswith("}}", i):
            literal, i = literal + ch, i + 2
        elif ch == "{":
            end, body = _param_end(segment, i + 1)
            if literal:
                parts.append(literal)
                literal = ""
            parts.append(_parse_param(body, segment))
            i = end + 1
        elif ch == "}":
            raise ValueError(f"unbalanced '}}' in route segment {segment!r}")
        else:
            literal, i = literal + ch, i + 1
    if literal:
        parts.append(literal)
    return parts


def _param_end(segment: str, i: int) -> tuple[int, str]:
    body = ""
    while i < len(segment):
        if segment.startswith("}}", i) or segment.startswith("{{", i):  # escaped, e.g. in regex(\d{{3}})
            body, i = body + segment[i], i + 2
        elif segment[i] == "}":
            return i, body
        else:
            body, i = body + segment[i], i + 1
    raise ValueError(f"unclosed '{{' in route segment {segment!r}")


def _parse_param(body: str, segment: str) -> Param:
    catch_all = body.startswith("*")
    body = body.lstrip("*")
    default = None
    optional = body.endswith("?")
    if optional:
        body = body[:-1]
    m = re.match(r"([^:=?]+)(.*)$", body)
    if not m:
        raise ValueError(f"route parameter without a name in {segment!r}")
    name, rest = m.group(1).strip(), m.group(2)
    constraints = []
    while rest.startswith(":"):
        cm = re.match(r":(\w+)", rest)
        if not cm:
            raise ValueError(f"bad constraint in route segment {segment!r}")
        kind, rest = cm.group(1).lower(), rest[cm.end():]
        args: tuple[str, ...] = ()
        if rest.startswith("("):
            depth, j = 0, 0
            for j, ch in enumerate(rest):  # noqa: B007 - j is read after it; regex arguments may hold parentheses
                depth += {"(": 1, ")": -1}.get(ch, 0)
                if depth == 0:
                    break
            raw, rest = rest[1:j], rest[j + 1:]
            args = (raw,) if kind == "regex" else tuple(a.strip() for a in raw.split(","))
        constraints.append((kind, args))
    if rest.startswith("="):
        default, optional = rest[1:], True
    elif rest:
        raise ValueError(f"cannot parse route parameter {{{body}}} in {segment!r}")
    return Param(name, tuple(constraints), optional, default, catch_all)


class RouteTable:
    """All HTTP functions' routes under one prefix, matched by path and method."""

    def __init__(self, route_prefix: str, entries: Iterable[FunctionEntry]) -> None:
        self.route_prefix = route_prefix.strip("/")
        self.targets: list[Target] = []
        self.templates: list[tuple[FunctionEntry, list[str] | None, str]] = []
        self._converters: dict[str, type[BaseConverter]] = {}
        rules = []
        for entry in entries:
            template = str(entry.trigger.get("route") or entry.name).strip().lstrip("~").strip("/")
            methods = [str(m).upper() for m in entry.trigger.get("methods") or []] or None
            self.templates.append((entry, methods, "/".join(filter(None, [self.route_prefix, template]))))
            rules.extend(self._rules(entry, template, methods))
        self.map = Map(rules, converters=self._converters, strict_slashes=False,
                       merge_slashes=False, redirect_defaults=False)
        self._adapter = self.map.bind("localhost")

    def match(self, path: str, method: str) -> tuple[FunctionEntry, dict[str, str]]:
        """Raises werkzeug's NotFound or MethodNotAllowed (with `valid_methods`)."""
        index, values = self._adapter.match(path, method)
        target = self.targets[index]
        return target.entry, target.route_params(values)

    def _rules(self, entry: FunctionEntry, template: str, methods: list[str] | None) -> list[Rule]:
        segments = [parse_segment(s) for s in template.split("/")] if template else []
        # Trailing segments made of one optional parameter may be left out: one rule per length.
        omittable = 0
        for seg in reversed(segments):
            if len(seg) == 1 and isinstance(seg[0], Param) and (seg[0].optional or seg[0].catch_all):
                omittable += 1
            else:
                break
        rules = []
        for keep in range(len(segments), len(segments) - omittable - 1, -1):
            names: list[tuple[str, str]] = []
            defaults: list[tuple[str, str]] = []
            parts: list[str] = []
            for seg in segments[:keep]:
                text = ""
                for part in seg:
                    if isinstance(part, str):
                        text += part
                    else:
                        rule_name = f"p{len(names)}"
                        names.append((rule_name, part.name))
                        text += f"<{self._converter(part)}:{rule_name}>"
                parts.append(text)
            for seg in segments[keep:]:  # left out: their defaults still reach the function
                param = seg[0]
                assert isinstance(param, Param)  # only one-Param segments are omittable (above)
                if param.default is not None:
                    defaults.append((param.name, param.default))
            path = "/" + "/".join(filter(None, [self.route_prefix, *parts]))
            self.targets.append(Target(entry, tuple(names), tuple(defaults)))
            rules.append(Rule(path, endpoint=len(self.targets) - 1, methods=methods))
        return rules

    def _converter(self, param: Param) -> str:
        if param.catch_all:
            return "path"
        regex, checks = r"[^/]+", []
        for kind, args in param.constraints:
            if kind in _TYPE_REGEX:
                regex = _TYPE_REGEX[kind]
            elif kind == "regex":
                regex = "(?i:" + args[0].removeprefix("^").removesuffix("$") + ")"
            elif kind in _CHECKS:
                checks.append((_CHECKS[kind], list(args)))
            elif kind not in _TOLERATED:
                log.warning("Route constraint '%s' on {%s} is not checked by the local host", kind, param.name)
        key = f"c{len(self._converters)}"

        def to_python(self, value: str) -> str:
            if not all(check(value, args) for check, args in checks):
                raise ValidationError()
            return value

        self._converters[key] = type(key, (BaseConverter,), {"regex": regex, "to_python": to_python})
        return key
