"""``gwc audit verify|query|replay``: offline tools over the trails gwc-runtime writes (no aiohttp).

What only one command uses is imported by that command: the checker for verify, the replay (its
worker processes, bundles and report) for replay; query needs neither.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from gwc.compiler.audit.query import COLUMNS, Counts, Query, parse_when, row, select
from gwc.compiler.audit.trail import Table, TrailError
from gwc.compiler.cli.common import TRAIL_FILES, TRUST, batch_job, fail, payload_of
from gwc.runtime.audit.record import DECISIONS
from gwc.runtime.audit.writer import in_trail_order

if TYPE_CHECKING:
    from gwc.compiler.audit.trail import TrailFile
    from gwc.runtime.audit.objects import StoreUrl

Sources = tuple["Path | StoreUrl", ...]  # what TRAIL_FILES gives: files and s3:// URLs


def _split(files: Sources) -> tuple[list[Path], list[StoreUrl]]:
    """The files, and the s3:// URLs (each once)."""
    return ([f for f in files if isinstance(f, Path)],
            list(dict.fromkeys(f for f in files if not isinstance(f, Path))))


def _trail_files(files: Sources) -> list[TrailFile]:
    """The files in trail order, then each store's shipped files (every chain, in key order, each
    key at its oldest version: what its node wrote). A key rewritten since (a newer version, a
    delete marker) or an alias of a key is a warning on stderr; ``verify`` calls it tampered. A
    store that cannot be listed, or holds no trail, is a usage error (exit 2)."""
    paths, stores = _split(files)
    found: list[TrailFile] = list(in_trail_order(paths))
    if stores:
        from gwc.compiler.audit.store import StoreError, trail_objects

        try:
            found.extend(trail_objects(stores, lambda finding: click.echo(
                f"gwc: warning: tampered: {finding}", err=True)))
        except StoreError as exc:
            click.echo(f"gwc: {exc}", err=True)
            sys.exit(2)
    return found


@click.group()
def audit() -> None:
    """Check and read the audit trails gwc-runtime writes."""


@audit.command("verify")
@TRAIL_FILES
@click.option("--key", "key_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="The gateway's public key (PEM), to check checkpoint signatures; repeat for "
                   "rotated keys.")
@click.option("--jwks", multiple=True, metavar="FILE|URL",
              help="The gateway's JWK Set (its /.well-known/jwks.json), as a file or an http(s) "
                   "URL; with or instead of --key.")
@click.option("--anchor", "anchor_files", multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="A saved head (GET /v1/audit/head): its node's trail must reach it. Repeat "
                   "for several nodes.")
def audit_verify(files: Sources, key_files: tuple[str, ...], jwks: tuple[str, ...],
                 anchor_files: tuple[str, ...]) -> None:
    """Check each node's trail (rotated files and current ones of one or more nodes, in any
    order), or the files nodes shipped to s3://bucket/prefix: every hash and link, and every
    checkpoint; from a store also every gap between shipped files, and their head objects. Exit 0
    intact, 1 tampered, 3 crash (a torn final line or a repair of one), 4 truncated (an anchored
    head is missing), 2 usage."""
    from gwc.compiler.audit.verify import EXIT_USAGE, UsageError, anchors, check, public_keys

    paths, stores = _split(files)
    try:
        keys = public_keys(key_files, jwks)
        heads = anchors(anchor_files, keys)
        stored = []
        if stores:
            from gwc.compiler.audit.store import StoreError, chains

            try:
                stored = [chain for store in stores for chain in chains(store)]
            except StoreError as exc:
                raise UsageError(str(exc)) from None
        sys.exit(check(paths, keys, heads, click.echo, stored))
    except UsageError as exc:
        click.echo(f"gwc: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except OSError as exc:
        click.echo(f"gwc: cannot read {exc.filename}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_USAGE)


class _When(click.ParamType):
    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return parse_when(value)
        except ValueError:
            self.fail(f"{value!r} is not a date (2026-11-19), a date-time (2026-11-19T10:00, "
                      "UTC unless it says Z or an offset) or an age (7d, 12h, 30m)", param, ctx)


def _filters(command: Callable[..., None]) -> Callable[..., None]:
    """The record filters query and replay share: repeat one to allow several values."""
    options = [
        click.option("--user", "users", multiple=True,
                     help="Principal subject or acting-for (an agent acting for them counts), "
                          "or an approval's requester."),
        click.option("--server", "servers", multiple=True),
        click.option("--tool", "tools", multiple=True),
        click.option("--decision", "decisions", multiple=True, type=click.Choice(DECISIONS)),
        click.option("--since", type=_When(), help="From this time, inclusive: 2026-11-19, "
                     "2026-11-19T10:00[Z|+01:00] (UTC if no offset), or an age: 7d, 12h, 30m."),
        click.option("--until", type=_When(), help="Up to this time, exclusive (same forms)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _query(users: tuple[str, ...], servers: tuple[str, ...], tools: tuple[str, ...],
           decisions: tuple[str, ...], since: str | None, until: str | None,
           tool_calls_only: bool = False) -> Query:
    return Query(frozenset(users), frozenset(servers), frozenset(tools), frozenset(decisions),
                 since, until, tool_calls_only)


def _stdout_closed() -> NoReturn:
    """The reader went away (| head): stop quietly, without a BrokenPipeError at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(1)


@audit.command("query")
@TRAIL_FILES
@_filters
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="json: the matching records as they are, one per line.")
def audit_query(files: Sources, fmt: str, **filters: Any) -> None:
    """Records of a trail by user, server, tool, decision and time, in trail order.

    For example, what alice touched on 19 November:
    gwc audit query audit.jsonl* --user alice --since 2026-11-19 --until 2026-11-20

    Start records are left out. The count goes to stderr. A line that is not a record stops the
    query with its file:line (gwc audit verify checks a whole trail).

    FILES may also be s3://bucket/prefix: the files nodes shipped there (AWS credentials and
    endpoint from the standard AWS variables and files).
    """
    paths, counts = _trail_files(files), Counts()
    try:
        matching = select(paths, _query(**filters), counts, numbered=False)
        if fmt == "json":
            out = sys.stdout.buffer
            for _, _, line, _ in matching:
                out.write(line + b"\n")
        else:
            table = Table(COLUMNS, sys.stdout.write)
            for _, _, _, record in matching:
                table.add(row(record))
            table.flush()
    except TrailError as exc:
        fail(str(exc))
    except BrokenPipeError:
        _stdout_closed()
    size = f"{counts.bytes / 1e6:,.1f} MB" if counts.bytes >= 100_000 else f"{counts.bytes:,} bytes"
    click.echo(f"{counts.matched} record(s) matched, in {counts.files} file(s) ({size})", err=True)


@audit.command("replay")
@TRAIL_FILES
@click.option("--bundles", "folder", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Where the recorded bundles are: <hex>.json files, or a gwc build --out "
                   "folder (bundles/ in it).")
@click.option("--against", type=click.Path(exists=True),
              help="Preview a proposed bundle (file, or registry folder compiled in memory) on "
                   "the recorded calls instead.")
@TRUST
@click.option("--no-verify", is_flag=True,
              help="Use bundles without checking their signatures (their digest is still "
                   "checked against the record).")
@_filters
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="json: one finding per line, then a summary line.")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True,
              help="Calls listed per kind in the table (0: all).")
@click.option("--jobs", type=click.IntRange(min=0), default=0,
              help="Processes replaying trail files side by side [default: one per core].")
@batch_job
def audit_replay(files: Sources, folder: Path, against: str | None,
                 trust: tuple[str, ...], no_verify: bool, fmt: str, limit: int, jobs: int,
                 **filters: Any) -> None:
    """Decide every recorded tools/call again with the runtime's policy code.

    \b
    Replay (no --against): each call under the bundle that decided it, found by its digest in
    --bundles. Every difference from the record is listed: the trail or the runtime is wrong.
    Exit 0: every call replayed to its recorded decision; 1: a difference, or a call that could
    not be replayed (its bundle missing or refused): nothing unchecked passes as checked.

    \b
    Preview (--against): each call under the proposed bundle; lists the calls it decides
    otherwise, counted per server, tool and change. The trail holds only the argument values
    the recording bundle's policy read, so a call whose new decision needs another argument is
    "undeterminable", not guessed. Exit 0: every call evaluated (changes are the point of a
    preview); 1: some calls were undeterminable or unreadable, so the preview is incomplete.

    Bundles must be signed by a --trust key, unless --no-verify. FILES may also be
    s3://bucket/prefix: the files nodes shipped there.
    """
    from gwc.compiler.audit.jobs import Setup, default_jobs, replay_trail
    from gwc.compiler.audit.replay import Totals
    from gwc.compiler.audit.report import Report, summary
    from gwc.runtime.bundle.read import BundleError, trusted_keys

    if not trust and not no_verify:
        raise click.UsageError("give the keys the bundles must be signed by (--trust KEY), "
                               "or --no-verify")
    try:
        trusted_keys(trust)  # a bad key file is an error here, not in every process
    except BundleError as exc:
        fail(str(exc))
    proposed = payload_of(against, trust) if against else None
    paths = _trail_files(files)
    setup = Setup(folder, trust, proposed, _query(**filters, tool_calls_only=True))
    totals, report, out = Totals(), Report(limit), sys.stdout
    try:
        for finding in replay_trail(paths, setup, jobs or default_jobs(), totals):
            if fmt == "json":
                out.write(json.dumps(finding.as_json(), ensure_ascii=False) + "\n")
            else:
                report.add(finding)
    except TrailError as exc:
        fail(str(exc))
    except BrokenPipeError:
        _stdout_closed()
    headline, failed = summary(totals, len(paths), against)
    if fmt == "json":
        out.write(json.dumps({"kind": "summary", **totals.as_json()}) + "\n")
        click.echo(headline, err=True)
    else:
        report.render(headline, totals, out.write)
    sys.exit(1 if failed else 0)


