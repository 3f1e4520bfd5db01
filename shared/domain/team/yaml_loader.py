"""YAML read strictly, so a key given twice is an error rather than a silently dropped value: PyYAML's
safe_load keeps the last of two equal keys without a word, which could drop a limit, so `load_yaml`
uses a SafeLoader subclass that refuses duplicate and non-scalar keys, and reports invalid YAML, an
empty file or a document that is not a mapping as a `TeamFileError` naming the line.
"""

from __future__ import annotations

from typing import Any

import yaml

from shared.domain.team.issues import Issue, TeamFileError


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice (PyYAML keeps the last one silently, which could
    drop a limit without a word), and refuses anchors and aliases: the files are read by an
    anonymous endpoint, and a few hundred bytes of nested aliases expand to gigabytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        mark: Any = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, f"YAML aliases (*{event.anchor}) are not accepted here; write the value out", mark)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise yaml.composer.ComposerError(
                None, None, f"YAML anchors (&{anchor}) are not accepted here; write the value out", mark)
        return super().compose_node(parent, index)


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice in one mapping", key_node.start_mark)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a plain value",
                                                    key_node.start_mark) from None
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_yaml(text: str, source: str) -> dict[str, Any]:
    """The document as a mapping, or TeamFileError naming the line."""
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass, so not an unsafe load (bandit S506)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TeamFileError([Issue(source, "(file)", f"not valid YAML{where}: {problem}")]) from None
    except RecursionError:  # e.g. 16,000 "[": the parser's stack, not a server error
        raise TeamFileError([Issue(source, "(file)", "not valid YAML: it nests too deeply")]) from None
    if raw is None:
        raise TeamFileError([Issue(source, "(file)", "is empty; it needs team and models (see docs/teams.md)")])
    if not isinstance(raw, dict):
        kind = "a list" if isinstance(raw, list) else f"a {type(raw).__name__}"
        raise TeamFileError([Issue(source, "(top level)",
                                   f"must be a mapping with team and models, not {kind}")])
    return raw
