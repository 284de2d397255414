"""``gwc dev-idp|dev-token``: a development identity provider, for demos and tests."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from gwc.compiler.build.diagnostics import render
from gwc.compiler.build.registry import load_gateway
from gwc.compiler.cli.common import fail
from gwc.compiler.client.dev_idp import DevIdP


@click.command("dev-idp")
@click.option("--out", "prefix", required=True, help="Writes PREFIX.key (0600) and PREFIX.jwks.json.")
def dev_idp(prefix: str) -> None:
    """Create a development identity provider key (for demos; production trusts the company IdP)."""
    key_path, jwks_path = DevIdP.generate().save(prefix)
    click.echo(f"wrote {key_path} (private) and {jwks_path}: name it as identity.jwks_file in "
               "gateway.yaml, or serve it as identity.jwks_uri")


@click.command("dev-token")
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
        fail(f"cannot load dev IdP {idp_key}: {exc}")
    click.echo(idp.token(issuer=identity.issuer, audience=identity.audience[0], subject=subject,
                         groups=list(groups), ttl_s=ttl, actor=agent,
                         groups_claim=identity.groups_claim))


COMMANDS = [dev_idp, dev_token]
