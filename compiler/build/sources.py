"""Reading YAML and JSON sources while keeping the way back to line and column.

Values are built from the YAML node tree (libyaml when available), which lets us refuse duplicate keys
and keep each file's nodes; positions are looked up from the nodes only when a diagnostic needs one.
JSON files are parsed by the json module (exact JSON semantics); their node tree is composed lazily.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gwc.compiler.build.diagnostics import Diagnostic

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR_TAG = "tag:yaml.org,2002:str"
ResolvedTags = dict[tuple[str, tuple[bool, bool]], str]  # (scalar, implicit) -> its tag
MAX_RESOLVED = 200_000


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]  # PyYAML's loader classes are untyped
    """The safe loader with implicit tag resolution memoized in ``resolved``, which the caller owns
    (a registry load shares one across its files): registries repeat the same scalars (access,
    read, write, ...) thousands of times, and PyYAML resolves each with regexes."""

    def __init__(self, stream: str, resolved: ResolvedTags) -> None:
        super().__init__(stream)
        self._resolved = resolved

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is not ScalarNode:
            return super().resolve(kind, value, implicit)
        key = (value, implicit)
        tag = self._resolved.get(key)
        if tag is None:
            if len(self._resolved) > MAX_RESOLVED:
                self._resolved.clear()
            tag = self._resolved[key] = super().resolve(kind, value, implicit)
        return tag

    # Path resolvers are not used, so the per-node bookkeeping for them is skipped.
    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        pass

    def ascend_resolver(self) -> None:
        pass
Loc = tuple[str | int, ...]


class _Duplicate(Exception):
    pass


@dataclass
class SourceFile:
    """One parsed input file: its data and, on demand, the position of any path inside it."""

    rel: str
    text: str
    data: Any
    _node: Node | None = field(default=None, repr=False)

    @property
    def node(self) -> Node | None:
        if self._node is None:
            # JSON allows tabs as white space where YAML does not; columns stay the same.
            text = self.text.replace("\t", " ") if self.rel.endswith(".json") else self.text
            try:
                self._node = _compose(text, {})[0]
            except yaml.YAMLError:
                return None
        return self._node

    def position(self, loc: Loc, key: bool = False) -> tuple[int, int]:
        """1-based (line, column) of the value at ``loc`` (of its key with ``key=True``).

        Parts of ``loc`` that are not in the data (validator bookkeeping) are skipped; a path that
        ends early points at the deepest node found, so a missing field points at its parent.
        """
        node = self.node
        if node is None:
            return 1, 1
        last = len(loc) - 1
        for i, part in enumerate(loc):
            if isinstance(node, MappingNode):
                pair = next((p for p in node.value
                             if isinstance(p[0], ScalarNode) and p[0].value == str(part)), None)
                if pair is None:
                    continue
                if key and i == last:
                    node = pair[0]
                    break
                node = pair[1]
            elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                node = node.value[part]
        mark = node.start_mark
        return mark.line + 1, mark.column + 1

    def diag(self, loc: Loc, code: str, message: str, severity: str = "error",
             key: bool = False) -> Diagnostic:
        line, col = self.position(loc, key)
        return Diagnostic(self.rel, line, col, severity, code, message)  # type: ignore[arg-type]


def _compose(text: str, resolved: ResolvedTags) -> tuple[Node | None, Any]:
    loader = _Loader(text, resolved)
    try:
        return loader.get_single_node(), loader
    finally:
        loader.dispose()


def _construct(node: Node, loader: Any, problems: list[tuple[Node, str, str]]) -> Any:
    """Build plain data from a node tree, noting (node, code, message) for what cannot be used."""
    if isinstance(node, ScalarNode):
        if node.tag == _STR_TAG:
            return node.value
        try:
            return loader.construct_object(node)
        except (yaml.YAMLError, ValueError) as exc:  # e.g. a date that does not exist, a << key
            problems.append((node, "unreadable-value", f"cannot read value {node.value!r}: "
                                                       f"{getattr(exc, 'problem', None) or exc}"))
            return node.value
    if isinstance(node, SequenceNode):
        return [_construct(n, loader, problems) for n in node.value]
    if isinstance(node, MappingNode):  # YAML merge keys (<<) are not supported
        out: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for knode, vnode in node.value:
            key = _construct(knode, loader, problems)
            if isinstance(key, (list, dict)):
                problems.append((knode, "duplicate-key", "mapping keys must be plain scalars"))
                continue
            if key in out:
                problems.append((knode, "duplicate-key",
                                 f"duplicate key '{key}' (first at line {first_line[key]})"))
            first_line[key] = knode.start_mark.line + 1
            out[key] = _construct(vnode, loader, problems)
        return out
    return None


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Duplicate
    return out


def load_source(path: Path, rel: str, resolved: ResolvedTags) -> tuple[SourceFile | None, list[Diagnostic]]:
    """Parse one file. Syntax errors and duplicate keys come back as diagnostics, never exceptions.
    ``resolved``: the YAML tags resolved so far, shared by the files of one load."""
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError as exc:
        return None, [Diagnostic(rel, 1, 1, "error", "syntax", f"not UTF-8 text ({exc.reason})")]
    except OSError as exc:
        return None, [Diagnostic(rel, 1, 1, "error", "io", f"cannot read: {exc.strerror or exc}")]
    if path.suffix == ".json":
        try:
            return SourceFile(rel, text, json.loads(text, object_pairs_hook=_reject_duplicates)), []
        except json.JSONDecodeError as exc:
            return None, [Diagnostic(rel, exc.lineno, exc.colno, "error", "syntax",
                                     f"invalid JSON: {exc.msg}")]
        except _Duplicate:
            pass  # fall through to the node walk, which says where
    try:
        node, loader = _compose(text.replace("\t", " ") if path.suffix == ".json" else text, resolved)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "syntax error"
        return None, [Diagnostic(rel, line, col, "error", "syntax", f"invalid YAML: {problem}")]
    except yaml.YAMLError as exc:
        return None, [Diagnostic(rel, 1, 1, "error", "syntax", f"invalid YAML: {exc}")]
    problems: list[tuple[Node, str, str]] = []
    data = _construct(node, loader, problems) if node is not None else None
    diags = [Diagnostic(rel, n.start_mark.line + 1, n.start_mark.column + 1, "error", code, message)
             for n, code, message in problems]
    return SourceFile(rel, text, data, node), diags
