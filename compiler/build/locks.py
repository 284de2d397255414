"""Tool lock files: the pinned definitions of a server's tools, ``registry/<server>.tools.json``.

``gwc pin`` writes them and owners commit them; ``gwc validate`` checks them against the manifest
and the policies; ``gwc build`` puts them in the bundle. The form is made for review: JSON with
sorted keys and two-space indents, so each tool is one block and a changed description or schema
is a small diff in the pull request.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LOCK_SUFFIX = ".tools.json"
LOCK_COMMENT = ("Tool definitions of server '{server}' as reviewed: what models are told about "
                "each tool, and what arguments are checked against. Written by `gwc pin "
                "{server}`; review changes like code.")


def lock_path(root: Path, server: str) -> Path:
    return root / "registry" / f"{server}{LOCK_SUFFIX}"


def is_lock(path: Path) -> bool:
    return path.name.endswith(LOCK_SUFFIX)


def render_lock(server: str, tools: dict[str, dict[str, Any]]) -> str:
    """The lock file's text: ``tools`` maps each tool name to its definition
    (``gwc.runtime.bundle.tool_definitions.definition_of``)."""
    document = {"$comment": LOCK_COMMENT.format(server=server), "server": server, "tools": tools}
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
