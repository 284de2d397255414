"""``gwc validate|build|keygen|verify|inspect|diff|codeowners|schema``: the registry and its bundles.

Only what ``gwc validate`` needs is imported here; each other command imports its own machinery
(the compiler and signing, bundle reading, the diff's templates) when it runs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from gwc.compiler.build import jsonschemas
from gwc.compiler.build.codeowners import codeowners as render_codeowners
from gwc.compiler.build.diagnostics import render
from gwc.compiler.build.registry import load_registry
from gwc.compiler.cli.common import ROOT, TRUST, batch_job, fail, load_valid, open_bundle, payload_of


@click.command()
@ROOT
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]), default="text",
              show_default=True, help="github prints workflow annotations.")
@batch_job
def validate(root: Path, fmt: str) -> None:
    """Check manifests, policies and gateway.yaml; report every problem with file:line:column."""
    registry = load_registry(root)
    click.echo(render(registry.diagnostics, len(registry.files), fmt))
    sys.exit(0 if registry.ok else 1)


@click.command("build")
@ROOT
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False),
              help="Ed25519 private key (PEM) that signs the bundle.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: bundle.json and bundles/<sha256>.json.")
@click.option("--serial", type=click.IntRange(min=0), default=None,
              help="Monotonic serial [default: commit time of HEAD, else SOURCE_DATE_EPOCH].")
@click.option("--revision", default=None, help="Source revision [default: HEAD commit].")
@batch_job
def build_cmd(root: Path, key_path: str, out: Path, serial: int | None, revision: str | None) -> None:
    """Validate, compile and sign the registry into one bundle."""
    from gwc.compiler.build.bundle import BuildError, build
    from gwc.compiler.build.keys import KeyFileError, load_private_key
    from gwc.compiler.build.report import one_line

    try:
        key = load_private_key(key_path)
    except KeyFileError as exc:
        fail(str(exc))
    registry = load_valid(root)
    try:
        built = build(registry, key, out, serial, revision)
    except (BuildError, OSError) as exc:
        fail(str(exc))
    warnings = len(registry.diagnostics)
    click.echo(f"{built.digest}\nserial {built.payload.serial}  revision {built.payload.revision}\n"
               f"{one_line(built.payload)}"
               + (f"; {warnings} warning(s) (gwc validate lists them)" if warnings else "")
               + f"\nwrote {built.path} and {built.addressed_path}")


@click.command()
@click.option("--out", "prefix", required=True, help="Writes PREFIX.key (0600) and PREFIX.pub.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def keygen(prefix: str, force: bool) -> None:
    """Generate an Ed25519 bundle-signing key pair."""
    from gwc.compiler.build.keys import KeyFileError, generate_keypair
    from gwc.runtime.bundle.envelope import key_id

    try:
        key_path, pub_path, key = generate_keypair(prefix, force)
    except (KeyFileError, OSError) as exc:
        fail(str(exc))
    click.echo(f"wrote {key_path} (private, keep secret) and {pub_path}\n"
               f"key id {key_id(key.public_key())}")


@click.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@click.option("--trust", "trust", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False),
              help="Trusted public key (PEM); repeat for rotation.")
@batch_job
def verify(bundle: str, trust: tuple[str, ...]) -> None:
    """Check a bundle's signature against trusted keys, and that its payload is a known format."""
    from gwc.runtime.bundle.read import BundleError, load_bundle, read_file, trusted_keys

    try:
        loaded = load_bundle(read_file(bundle), trusted_keys(trust))
    except BundleError as exc:
        fail(f"refused {bundle}: {exc}")
    click.echo(f"ok: {loaded.digest} serial {loaded.serial} revision {loaded.payload.revision}, "
               f"signed by key {loaded.keyid}")


@click.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@TRUST
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@batch_job
def inspect(bundle: str, trust: tuple[str, ...], fmt: str) -> None:
    """Summarize a bundle: servers, tools, and who can call what."""
    from gwc.compiler.build.report import summary_json, summary_text

    loaded = open_bundle(bundle, trust)
    if fmt == "json":
        click.echo(json.dumps(summary_json(loaded, bool(trust)), indent=2))
    else:
        click.echo(summary_text(loaded, bool(trust)))


@click.command()
@click.argument("old", type=click.Path(exists=True))
@click.argument("new", type=click.Path(exists=True))
@TRUST
@click.option("--format", "fmt", type=click.Choice(["markdown", "json"]), default="markdown",
              show_default=True)
@batch_job
def diff(old: str, new: str, trust: tuple[str, ...], fmt: str) -> None:
    """Access changes between two bundles or registry folders (servers, tools, who gains what)."""
    from gwc.compiler.build.diff import diff_payloads, render_markdown

    result = diff_payloads(payload_of(old, trust), payload_of(new, trust))
    click.echo(json.dumps(result, indent=2) if fmt == "json" else render_markdown(result), nl=False)


@click.command()
@ROOT
@click.option("--org", default=None, help="GitHub organization, for @org/team handles.")
@batch_job
def codeowners(root: Path, org: str | None) -> None:
    """Print CODEOWNERS lines: each owner team owns its manifests and policies/<team>/."""
    click.echo(render_codeowners(load_valid(root), org), nl=False)


@click.command()
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path),
              default=jsonschemas.SCHEMA_DIR, show_default=True)
def schema(out: Path) -> None:
    """Write the JSON Schemas (draft 2020-12) of manifests, policy files and gateway.yaml."""
    for path in jsonschemas.write(out):
        click.echo(f"wrote {path}")


COMMANDS = [validate, build_cmd, keygen, verify, inspect, diff, codeowners, schema]
