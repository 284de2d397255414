"""``gwc diff``: what changes for whom between two bundles (or registry trees), and what models
are told about each tool (its pinned definition)."""
from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gwc.compiler.build.report import access_matrix, subjects
from gwc.runtime.bundle.canonical import canonical_json
from gwc.runtime.bundle.format import BundlePayload, PinnedTool
from gwc.runtime.bundle.tool_definitions import pointer

if TYPE_CHECKING:
    import jinja2

# the parts of a definition compared field by field; title and description are text
STRUCTURED_FIELDS = ("annotations", "inputSchema", "outputSchema")
_ABSENT: Any = object()  # a key one side does not have


def _tool_facts(tool: Any) -> dict[str, Any]:
    return {"access": tool.access, "mode": tool.mode, "approval": tool.approval is not None}


def _same(a: Any, b: Any) -> bool:
    """JSON equality: unlike ``==``, ``1``, ``1.0`` and ``true`` differ, as they do to a schema."""
    return canonical_json(a) == canonical_json(b)


def _walk(field: str, old: Any, new: Any, path: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """Changes from ``old`` to ``new``: objects key by key, anything else (arrays too) whole."""
    if old is _ABSENT and new is _ABSENT:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys()):
            yield from _walk(field, old.get(key, _ABSENT), new.get(key, _ABSENT), (*path, key))
    elif old is _ABSENT or new is _ABSENT or not _same(old, new):
        change = "added" if old is _ABSENT else "removed" if new is _ABSENT else "changed"
        yield {"field": field, "pointer": pointer(path), "change": change,
               "old": None if old is _ABSENT else old, "new": None if new is _ABSENT else new}


def _description_lines(definition: dict[str, Any]) -> list[str]:
    # split, not splitlines: a trailing newline added or removed shows as a line
    return definition["description"].split("\n") if "description" in definition else []


def definition_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What a reviewer reads of a changed definition: the title's old and new text (None when
    the same), the description as unified diff lines, and every structured change, sorted."""
    title = None if _same(old.get("title"), new.get("title")) else {
        "old": old.get("title"), "new": new.get("title")}
    description = list(difflib.unified_diff(_description_lines(old), _description_lines(new),
                                            "old", "new", lineterm=""))
    changes = [change for field in STRUCTURED_FIELDS
               for change in _walk(field, old.get(field, _ABSENT), new.get(field, _ABSENT), ())]
    return {"title": title, "description_diff": description,
            "changes": sorted(changes, key=lambda c: (c["field"], c["pointer"]))}


def _definition_entry(server: str, tool: str, before: PinnedTool | None,
                      after: PinnedTool | None) -> dict[str, Any] | None:
    """A tool's pin added, removed or changed; None when neither side pins it or both agree."""
    entry = {"server": server, "tool": tool}
    if after is not None and before is None:
        return {**entry, "change": "pinned", "digest": after.digest, "definition": after.definition}
    if before is not None and after is None:
        return {**entry, "change": "unpinned", "digest": before.digest}
    if before is None or after is None or before.digest == after.digest:
        return None
    return {**entry, "change": "changed", "old_digest": before.digest, "new_digest": after.digest,
            **definition_changes(before.definition, after.definition)}


def diff_payloads(old: BundlePayload, new: BundlePayload) -> dict[str, Any]:
    """A JSON-ready account of server, tool and access changes; empty lists when nothing changed."""
    old_names, new_names = set(old.servers), set(new.servers)
    tools_added, tools_removed, tools_changed, definitions = [], [], [], []
    for name in sorted(old_names | new_names):
        before = old.servers[name].tools if name in old_names else {}
        after = new.servers[name].tools if name in new_names else {}
        for tool in sorted(set(after) - set(before)):
            tools_added.append({"server": name, "tool": tool, **_tool_facts(after[tool])})
        for tool in sorted(set(before) - set(after)):
            tools_removed.append({"server": name, "tool": tool, **_tool_facts(before[tool])})
        for tool in sorted(after):
            entry = _definition_entry(name, tool, before[tool].pinned if tool in before else None,
                                      after[tool].pinned)
            if entry is not None:
                definitions.append(entry)
        for tool in sorted(set(before) & set(after)):
            a, b = _tool_facts(before[tool]), _tool_facts(after[tool])
            for field in ("access", "mode", "approval"):
                if a[field] != b[field]:
                    tools_changed.append({"server": name, "tool": tool, "field": field,
                                          "old": a[field], "new": b[field]})
    visibility_changed = [
        {"server": n, "old": list(old.servers[n].visibility.entries()),
         "new": list(new.servers[n].visibility.entries())}
        for n in sorted(old_names & new_names)
        if old.servers[n].visibility != new.servers[n].visibility]
    principals = {**subjects(old), **subjects(new)}
    before_m, after_m = access_matrix(old, principals), access_matrix(new, principals)
    access = []
    for label in sorted(principals):
        granted_before, granted_after = before_m[label], after_m[label]
        gains, losses, changes = [], [], []
        for key in sorted(set(granted_after) | set(granted_before)):
            server, tool = key
            was, now = granted_before.get(key), granted_after.get(key)
            payload = new if now is not None else old
            entry = {"server": server, "tool": tool,
                     "access": payload.servers[server].tools[tool].access}
            if was is None and now is not None:
                gains.append({**entry, "conditional": now == "conditional"})
            elif now is None and was is not None:
                losses.append({**entry, "conditional": was == "conditional"})
            elif was != now:
                changes.append({**entry, "old": was, "new": now})
        if gains or losses or changes:
            access.append({"subject": label, "gains": gains, "losses": losses, "changes": changes})
    return {
        "old": {"serial": old.serial, "revision": old.revision},
        "new": {"serial": new.serial, "revision": new.revision},
        "servers_added": sorted(new_names - old_names),
        "servers_removed": sorted(old_names - new_names),
        "tools_added": tools_added, "tools_removed": tools_removed, "tools_changed": tools_changed,
        "visibility_changed": visibility_changed, "access": access, "definitions": definitions,
        "changed": bool(new_names ^ old_names or tools_added or tools_removed or tools_changed
                        or visibility_changed or access or definitions),
    }


def _fenced(text: str, info: str = "") -> str:
    """A fenced code block longer than any backtick run in ``text``: an upstream's description
    cannot close it and write into the review comment."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def _json_text(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, indent=indent, sort_keys=True, ensure_ascii=False)


def _change_lines(entry: dict[str, Any]) -> list[str]:
    """A changed definition's title and structured changes, one line each, values as JSON."""
    title, lines = entry["title"], []
    if title is not None:
        lines.append(f"title: {_json_text(title['old'])} → {_json_text(title['new'])}")
    for c in entry["changes"]:
        where = f"{c['field']} {c['pointer']}" if c["pointer"] else c["field"]
        if c["change"] == "changed":
            lines.append(f"{where}: {_json_text(c['old'])} → {_json_text(c['new'])}")
        else:
            value = c["old"] if c["change"] == "removed" else c["new"]
            lines.append(f"{where}: {c['change']} {_json_text(value)}")
    return lines


@functools.cache
def _templates() -> jinja2.Environment:
    """The templates, loaded on first use: ``gwc diff --format json`` never imports jinja2."""
    import jinja2

    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    templates.filters.update(fenced=_fenced, json_text=_json_text, change_lines=_change_lines)
    return templates


def render_markdown(diff: dict[str, Any]) -> str:
    return _templates().get_template("diff.md.j2").render(d=diff)
