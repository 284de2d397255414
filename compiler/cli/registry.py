"""``gwc validate|build|codeowners|schema``: the commands that read a registry.

Only what ``gwc validate`` needs is imported here; ``gwc build`` imports the compiler and signing
when it runs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from gwc.compiler.build import jsonschemas
from gwc.compiler.build.codeowners import codeowners as render_codeowners
from gwc.compiler.build.diagnostics import render
from gwc.compiler.build.registry import load_registry
from gwc.compiler.cli.common import ROOT, batch_job, fail, load_valid


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
@click.option("--payload", "encoding", type=click.Choice(["lines", "json"]), default="lines",
              show_default=True, help="Payload encoding: lines (nodes load big bundles fastest) "
              "or json (one document, which nodes of gwc before issue 15 also read).")
@batch_job
def build_cmd(root: Path, key_path: str, out: Path, serial: int | None, revision: str | None,
              encoding: str) -> None:
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
        built = build(registry, key, out, serial, revision, encoding)
    except (BuildError, OSError) as exc:
        fail(str(exc))
    warnings = len(registry.diagnostics)
    click.echo(f"{built.digest}\nserial {built.payload.serial}  revision {built.payload.revision}\n"
               f"{one_line(built.payload)}"
               + (f"; {warnings} warning(s) (gwc validate lists them)" if warnings else "")
               + f"\nwrote {built.path} and {built.addressed_path}")


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
