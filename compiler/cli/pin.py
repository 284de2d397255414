"""``gwc pin SERVER``: write ``registry/<server>.tools.json``, the upstream's current definitions of
the tools the manifest declares, for the owners to commit and reviewers to read in the pull request.

The MCP client (``gwc.compiler.client.upstream_tools``) and the bundle writer's module (the
compiler and signing) are imported inside the command: ``gwc pin --help`` loads neither.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from gwc.compiler.build.diagnostics import render
from gwc.compiler.build.locks import lock_path, render_lock
from gwc.compiler.build.models import ServerManifest
from gwc.compiler.build.registry import MANIFEST_SUFFIXES, load_registry
from gwc.compiler.cli.common import batch_job, fail
from gwc.runtime.bundle.canonical import canonical_json
from gwc.runtime.bundle.tool_definitions import DEFINITION_FIELDS, definition_of

# manifest errors that pinning is the fix for (pin: required, and a declared tool not pinned yet)
FIXED_BY_PIN = frozenset({"not-pinned"})


def _manifest(root: Path, server: str) -> ServerManifest:
    """The server's manifest as the registry loads it; its file's errors end the command, except
    those a new lock fixes. Errors elsewhere (a stale lock, a policy) do not concern pinning."""
    registry = load_registry(root)
    files = {f"registry/{server}{suffix}" for suffix in MANIFEST_SUFFIXES}
    errors = [d for d in registry.errors if d.file in files and d.code not in FIXED_BY_PIN]
    if errors:
        click.echo(render(errors, len({d.file for d in errors}), "text"), err=True)
        sys.exit(1)
    entry = registry.servers.get(server)
    if entry is None:
        fail(f"no server '{server}' in {root / 'registry'}")
    return entry.manifest


def _previous(path: Path) -> tuple[dict[str, Any], str | None]:
    """The tools of the lock being replaced, and why it could not be read (None: it could, or
    there is none)."""
    try:
        tools = json.loads(path.read_text(encoding="utf-8"))["tools"]
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {}, f"{type(exc).__name__}: {exc}"
    if not isinstance(tools, dict):
        return {}, "'tools' is not an object"
    return tools, None


def _changed_fields(old: Any, new: dict[str, Any]) -> list[str]:
    """The definition fields that differ, compared as JSON (so ``1`` is not ``true``)."""
    if not isinstance(old, dict):
        return ["definition"]
    return [f for f in DEFINITION_FIELDS if canonical_json(old.get(f)) != canonical_json(new.get(f))]


def _report(previous: dict[str, Any], tools: dict[str, dict[str, Any]]) -> list[str]:
    """One line per tool: added, changed (which fields), unchanged, or removed from the lock."""
    lines = []
    for name in sorted(previous.keys() | tools.keys()):
        if name not in previous:
            lines.append(f"  added      {name}")
        elif name not in tools:
            lines.append(f"  removed    {name}")
        elif fields := _changed_fields(previous[name], tools[name]):
            lines.append(f"  changed    {name}: {', '.join(fields)}")
        else:
            lines.append(f"  unchanged  {name}")
    return lines


@click.command("pin")
@click.argument("server")
@click.option("--root", default=".", show_default=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The registry repository.")
@click.option("--upstream", default=None, metavar="URL",
              help="Read the tools from this MCP endpoint (a staging server, say) instead of the "
                   "manifest's upstream.")
@click.option("--allow-missing", is_flag=True,
              help="Pin the declared tools the upstream lists even when it lacks some.")
@batch_job
def pin(server: str, root: Path, upstream: str | None, allow_missing: bool) -> None:
    """Write registry/SERVER.tools.json: the upstream's definitions of the declared tools.

    Credential: $GWC_PIN_TOKEN as a bearer token if set; else, for upstream_auth static_env, the
    manifest's variable in its header; else none."""
    from gwc.compiler.build.bundle import write_atomically
    from gwc.compiler.client.upstream_tools import UpstreamError, credential, list_tools

    if upstream is not None and not upstream.startswith(("https://", "http://")):
        fail(f"--upstream must be an http(s) URL, not {upstream!r}")
    manifest = _manifest(root, server)
    url = upstream or manifest.upstream
    try:
        listed = asyncio.run(list_tools(url, credential(manifest, os.environ)))
    except UpstreamError as exc:
        fail(str(exc))
    missing = sorted(set(manifest.tools) - set(listed))
    if missing and not allow_missing:
        fail(f"{url} does not list {len(missing)} tool(s) that server '{server}' declares: "
             f"{', '.join(missing)}; nothing written (--allow-missing pins the others)")
    tools = {name: definition_of(listed[name]) for name in sorted(manifest.tools) if name in listed}
    path = lock_path(root, server)
    previous, unreadable = _previous(path)
    click.echo(f"{server}: {len(tools)} of {len(manifest.tools)} declared tools read from {url}")
    if unreadable:
        click.echo(f"  (the previous {path} could not be read, {unreadable}: replaced)")
    click.echo("\n".join([*_report(previous, tools),
                          *(f"  missing    {name}: not listed by the upstream, not pinned"
                            for name in missing)]))
    text = render_lock(server, tools)
    if not unreadable and path.exists() and path.read_text(encoding="utf-8") == text:
        click.echo(f"{path} is up to date")
        return
    try:
        write_atomically(path, text.encode("utf-8"))
    except OSError as exc:
        fail(f"cannot write {path}: {exc}")
    click.echo(f"wrote {path}: review the change and commit it")
