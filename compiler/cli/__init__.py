"""The ``gwc`` command line: validate, build, verify, inspect and diff bundles; client configs.

Exit codes: 0 success, 1 the input is invalid or a check failed, 2 usage error.
"""
from __future__ import annotations

import gc
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from gwc.compiler.audit.jobs import Setup, default_jobs, replay_trail
from gwc.compiler.audit.query import COLUMNS, DECISIONS, Counts, Query, parse_when, row, select
from gwc.compiler.audit.replay import Totals
from gwc.compiler.audit.report import Report, summary
from gwc.compiler.audit.trail import Table, TrailError
from gwc.compiler.audit.verify import EXIT_USAGE, UsageError, anchors, check, public_keys
from gwc.compiler.build import jsonschemas
from gwc.compiler.build.bundle import BuildError, build, default_revision
from gwc.compiler.build.codeowners import codeowners as render_codeowners
from gwc.compiler.build.compile import compile_registry
from gwc.compiler.build.diagnostics import render
from gwc.compiler.build.diff import diff_payloads, render_markdown
from gwc.compiler.build.keys import KeyFileError, generate_keypair, load_private_key
from gwc.compiler.build.registry import Registry, load_gateway, load_registry
from gwc.compiler.build.report import one_line, summary_json, summary_text
from gwc.compiler.client import configs as client_config
from gwc.compiler.client.dev_idp import DevIdP
from gwc.compiler.client.governance import approvals, bypass
from gwc.runtime.audit.writer import in_trail_order
from gwc.runtime.bundle.envelope import key_id
from gwc.runtime.bundle.format import BundlePayload
from gwc.runtime.bundle.read import Bundle, BundleError, load_bundle, read_file, read_unverified, trusted_keys

TRAIL_FILES = click.argument("files", nargs=-1, required=True,
                             type=click.Path(exists=True, dir_okay=False, path_type=Path))
ROOT = click.argument("root", default=".", type=click.Path(exists=True, file_okay=False, path_type=Path))
TRUST = click.option("--trust", "trust", multiple=True, type=click.Path(exists=True, dir_okay=False),
                     help="Trusted public key (PEM); repeat for rotation.")


def _fail(message: str) -> NoReturn:
    click.echo(f"gwc: {message}", err=True)
    sys.exit(1)


def _load_valid(root: Path) -> Registry:
    registry = load_registry(root)
    if not registry.ok:
        click.echo(render(registry.diagnostics, len(registry.files), "text"), err=True)
        sys.exit(1)
    return registry


def _open_bundle(path: str, trust: tuple[str, ...]) -> Bundle:
    try:
        data = read_file(path)
        return load_bundle(data, trusted_keys(trust)) if trust else read_unverified(data)
    except BundleError as exc:
        _fail(f"{path}: {exc}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gwc")
def main() -> None:
    """gwc: compile an MCP server registry into one signed bundle, and inspect bundles."""
    # A gwc command is a short batch job that builds large acyclic trees (a big registry is
    # millions of objects, all alive until exit). The cyclic collector would rescan them over and
    # over: 8 s instead of 2 s to parse 4,000 files. Reference counting still frees memory.
    gc.disable()


@main.command()
@ROOT
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]), default="text",
              show_default=True, help="github prints workflow annotations.")
def validate(root: Path, fmt: str) -> None:
    """Check manifests, policies and gateway.yaml; report every problem with file:line:column."""
    registry = load_registry(root)
    click.echo(render(registry.diagnostics, len(registry.files), fmt))
    sys.exit(0 if registry.ok else 1)


@main.command("build")
@ROOT
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False),
              help="Ed25519 private key (PEM) that signs the bundle.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: bundle.json and bundles/<sha256>.json.")
@click.option("--serial", type=click.IntRange(min=0), default=None,
              help="Monotonic serial [default: commit time of HEAD, else SOURCE_DATE_EPOCH].")
@click.option("--revision", default=None, help="Source revision [default: HEAD commit].")
def build_cmd(root: Path, key_path: str, out: Path, serial: int | None, revision: str | None) -> None:
    """Validate, compile and sign the registry into one bundle."""
    try:
        key = load_private_key(key_path)
    except KeyFileError as exc:
        _fail(str(exc))
    registry = _load_valid(root)
    try:
        built = build(registry, key, out, serial, revision)
    except (BuildError, OSError) as exc:
        _fail(str(exc))
    warnings = len(registry.diagnostics)
    click.echo(f"{built.digest}\nserial {built.payload.serial}  revision {built.payload.revision}\n"
               f"{one_line(built.payload)}"
               + (f"; {warnings} warning(s) (gwc validate lists them)" if warnings else "")
               + f"\nwrote {built.path} and {built.addressed_path}")


@main.command()
@click.option("--out", "prefix", required=True, help="Writes PREFIX.key (0600) and PREFIX.pub.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def keygen(prefix: str, force: bool) -> None:
    """Generate an Ed25519 bundle-signing key pair."""
    try:
        key_path, pub_path, key = generate_keypair(prefix, force)
    except (KeyFileError, OSError) as exc:
        _fail(str(exc))
    click.echo(f"wrote {key_path} (private, keep secret) and {pub_path}\n"
               f"key id {key_id(key.public_key())}")


@main.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@click.option("--trust", "trust", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False),
              help="Trusted public key (PEM); repeat for rotation.")
def verify(bundle: str, trust: tuple[str, ...]) -> None:
    """Check a bundle's signature against trusted keys, and that its payload is a known format."""
    try:
        loaded = load_bundle(read_file(bundle), trusted_keys(trust))
    except BundleError as exc:
        _fail(f"refused {bundle}: {exc}")
    click.echo(f"ok: {loaded.digest} serial {loaded.serial} revision {loaded.payload.revision}, "
               f"signed by key {loaded.keyid}")


@main.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@TRUST
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def inspect(bundle: str, trust: tuple[str, ...], fmt: str) -> None:
    """Summarize a bundle: servers, tools, and who can call what."""
    loaded = _open_bundle(bundle, trust)
    if fmt == "json":
        click.echo(json.dumps(summary_json(loaded, bool(trust)), indent=2))
    else:
        click.echo(summary_text(loaded, bool(trust)))


def _payload_of(path: str, trust: tuple[str, ...]) -> BundlePayload:
    """A side of a diff: a bundle file, or a registry folder compiled in memory (unsigned)."""
    if Path(path).is_dir():
        registry = _load_valid(Path(path))
        return compile_registry(registry, 0, default_revision(Path(path), registry.input_paths()))
    return _open_bundle(path, trust).payload


@main.command()
@click.argument("old", type=click.Path(exists=True))
@click.argument("new", type=click.Path(exists=True))
@TRUST
@click.option("--format", "fmt", type=click.Choice(["markdown", "json"]), default="markdown",
              show_default=True)
def diff(old: str, new: str, trust: tuple[str, ...], fmt: str) -> None:
    """Access changes between two bundles or registry folders (servers, tools, who gains what)."""
    result = diff_payloads(_payload_of(old, trust), _payload_of(new, trust))
    click.echo(json.dumps(result, indent=2) if fmt == "json" else render_markdown(result), nl=False)


@main.group()
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
def audit_verify(files: tuple[Path, ...], key_files: tuple[str, ...], jwks: tuple[str, ...],
                 anchor_files: tuple[str, ...]) -> None:
    """Check each node's trail (rotated files and current ones of one or more nodes, in any
    order): every hash and link, and every checkpoint. Exit 0 intact, 1 tampered, 3 crash (a torn
    final line or a repair of one), 4 truncated (an anchored head is missing), 2 usage."""
    try:
        keys = public_keys(key_files, jwks)
        sys.exit(check(list(files), keys, anchors(anchor_files, keys), click.echo))
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
def audit_query(files: tuple[Path, ...], fmt: str, **filters: Any) -> None:
    """Records of a trail by user, server, tool, decision and time, in trail order.

    For example, what alice touched on 19 November:
    gwc audit query audit.jsonl* --user alice --since 2026-11-19 --until 2026-11-20

    Start records are left out. The count goes to stderr. A line that is not a record stops the
    query with its file:line (gwc audit verify checks a whole trail).
    """
    paths, counts = in_trail_order(list(files)), Counts()
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
        _fail(str(exc))
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
def audit_replay(files: tuple[Path, ...], folder: Path, against: str | None,
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

    Bundles must be signed by a --trust key, unless --no-verify.
    """
    if not trust and not no_verify:
        raise click.UsageError("give the keys the bundles must be signed by (--trust KEY), "
                               "or --no-verify")
    try:
        trusted_keys(trust)  # a bad key file is an error here, not in every process
    except BundleError as exc:
        _fail(str(exc))
    proposed = _payload_of(against, trust) if against else None
    paths = in_trail_order(list(files))
    setup = Setup(folder, trust, proposed, _query(**filters, tool_calls_only=True))
    totals, report, out = Totals(), Report(limit), sys.stdout
    try:
        for finding in replay_trail(paths, setup, jobs or default_jobs(), totals):
            if fmt == "json":
                out.write(json.dumps(finding.as_json(), ensure_ascii=False) + "\n")
            else:
                report.add(finding)
    except TrailError as exc:
        _fail(str(exc))
    except BrokenPipeError:
        _stdout_closed()
    headline, failed = summary(totals, len(paths), against)
    if fmt == "json":
        out.write(json.dumps({"kind": "summary", **totals.as_json()}) + "\n")
        click.echo(headline, err=True)
    else:
        report.render(headline, totals, out.write)
    sys.exit(1 if failed else 0)


@main.command("dev-idp")
@click.option("--out", "prefix", required=True, help="Writes PREFIX.key (0600) and PREFIX.jwks.json.")
def dev_idp(prefix: str) -> None:
    """Create a development identity provider key (for demos; production trusts the company IdP)."""
    key_path, jwks_path = DevIdP.generate().save(prefix)
    click.echo(f"wrote {key_path} (private) and {jwks_path}: name it as identity.jwks_file in "
               "gateway.yaml, or serve it as identity.jwks_uri")


@main.command("dev-token")
@click.option("--idp", "idp_key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The dev IdP key written by gwc dev-idp.")
@click.option("--sub", "subject", required=True, help="Token subject (the user).")
@click.option("--group", "groups", multiple=True, help="IdP group or team; repeat.")
@click.option("--agent", default=None, help="Make it an agent's token acting for --sub.")
@click.option("--ttl", type=click.IntRange(1, 86_400), default=3600, show_default=True)
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=".",
              show_default=True, help="Registry whose gateway.yaml names issuer and audience.")
def dev_token(idp_key: str, subject: str, groups: tuple[str, ...], agent: str | None, ttl: int,
              root: Path) -> None:
    """Mint a bearer token from the dev IdP, for the issuer and audience in gateway.yaml."""
    registry = load_gateway(root)
    if registry.gateway is None:
        click.echo(render(registry.diagnostics, len(registry.files), "text"), err=True)
        sys.exit(1)
    identity = registry.gateway.identity
    try:
        idp = DevIdP.load(idp_key)
    except (OSError, ValueError, KeyError) as exc:
        _fail(f"cannot load dev IdP {idp_key}: {exc}")
    click.echo(idp.token(issuer=identity.issuer, audience=identity.audience[0], subject=subject,
                         groups=list(groups), ttl_s=ttl, actor=agent,
                         groups_claim=identity.groups_claim))


@main.command()
@ROOT
@click.option("--org", default=None, help="GitHub organization, for @org/team handles.")
def codeowners(root: Path, org: str | None) -> None:
    """Print CODEOWNERS lines: each owner team owns its manifests and policies/<team>/."""
    click.echo(render_codeowners(_load_valid(root), org), nl=False)


@main.command()
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path),
              default=jsonschemas.SCHEMA_DIR, show_default=True)
def schema(out: Path) -> None:
    """Write the JSON Schemas (draft 2020-12) of manifests, policy files and gateway.yaml."""
    for path in jsonschemas.write(out):
        click.echo(f"wrote {path}")


@main.command("client-config")
@click.option("--gateway", "gateway", required=True, metavar="URL",
              help="The gateway's base URL (its --public-url), e.g. https://mcp.acme.example.")
@click.option("--client", type=click.Choice(sorted(client_config.CLIENTS)), default="generic",
              show_default=True, help="Which client's config shape to print.")
@click.option("--name", default=client_config.DEFAULT_NAME, show_default=True,
              help="The entry's name in the client (a prefix of the tool names it shows).")
@click.option("--allow-http", is_flag=True,
              help="Allow http:// to a host that is not loopback (tokens travel in clear text).")
def client_config_cmd(gateway: str, client: str, name: str, allow_http: bool) -> None:
    """Print the config entry that connects an MCP client.

    The entry names the gateway's aggregate endpoint, <URL>/mcp. stdout is only the JSON; a hint on stderr says which file it goes into. No token goes in it:
    clients that implement MCP authorization log in through the company IdP on first use.
    """
    try:
        endpoint = client_config.endpoint(gateway, name, allow_http)
    except client_config.ClientConfigError as exc:
        raise click.BadParameter(str(exc), param_hint=f"'{exc.option}'") from None
    shape = client_config.CLIENTS[client]
    click.echo(json.dumps(client_config.render(client, endpoint), indent=2))
    click.echo(f"{shape.title}: {shape.where}", err=True)
    if endpoint.cleartext:
        click.echo("warning: plain http to another host: tokens travel unencrypted", err=True)


@main.command("session-key")
def session_key() -> None:
    """Print a new random fleet session key.

    For gwc-runtime --session-keys (GWC_SESSION_KEYS): 32 bytes, URL-safe base64.
    """
    click.echo(client_config.new_session_key())


main.add_command(approvals)
main.add_command(bypass)

if __name__ == "__main__":
    main()
