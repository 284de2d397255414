"""``gwc keygen|verify|inspect|diff``: signing keys and the bundles they sign.

Each command imports what it works with when it runs (keys, bundle reading, the access report, the
diff and its templates): none of them needs the registry loader, and ``gwc keygen`` not even
pydantic.
"""
from __future__ import annotations

import json

import click

from gwc.compiler.cli.common import TRUST, batch_job, fail, open_bundle, payload_of


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
