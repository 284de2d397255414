"""``gwc diff``: what changes for whom between two bundles (or registry trees)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from gwc.compiler.build.report import access_matrix, subjects
from gwc.runtime.bundle.format import BundlePayload

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)

def _tool_facts(tool: Any) -> dict[str, Any]:
    return {"access": tool.access, "mode": tool.mode, "approval": tool.approval is not None}


def diff_payloads(old: BundlePayload, new: BundlePayload) -> dict[str, Any]:
    """A JSON-ready account of server, tool and access changes; empty lists when nothing changed."""
    old_names, new_names = set(old.servers), set(new.servers)
    tools_added, tools_removed, tools_changed = [], [], []
    for name in sorted(old_names | new_names):
        before = old.servers[name].tools if name in old_names else {}
        after = new.servers[name].tools if name in new_names else {}
        for tool in sorted(set(after) - set(before)):
            tools_added.append({"server": name, "tool": tool, **_tool_facts(after[tool])})
        for tool in sorted(set(before) - set(after)):
            tools_removed.append({"server": name, "tool": tool, **_tool_facts(before[tool])})
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
        "visibility_changed": visibility_changed, "access": access,
        "changed": bool(new_names ^ old_names or tools_added or tools_removed or tools_changed
                        or visibility_changed or access),
    }


def render_markdown(diff: dict[str, Any]) -> str:
    return _TEMPLATES.get_template("diff.md.j2").render(d=diff)
