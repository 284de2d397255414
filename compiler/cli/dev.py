"""``gwc dev-idp|dev-token``: a development identity provider, for demos and tests.

The dev IdP's key (``DevIdP``: PyJWT and cryptography) is what every command here uses; the server
with its users and clients (aiohttp, pydantic) and gateway.yaml's loader are imported by the
commands that need them.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from gwc.compiler.build.diagnostics import render
from gwc.compiler.build.hosts import is_loopback
from gwc.compiler.cli.common import fail
from gwc.compiler.client.dev_idp import DevIdP


@click.group("dev-idp", invoke_without_command=True)
@click.option("--out", "prefix", help="Writes PREFIX.key (0600) and PREFIX.jwks.json.")
@click.pass_context
def dev_idp(ctx: click.Context, prefix: str | None) -> None:
    """Create a development identity provider key (for demos; production trusts the company IdP).

    `gwc dev-idp serve` runs it as a local OpenID Connect provider."""
    if ctx.invoked_subcommand is not None:
        if prefix is not None:
            raise click.UsageError("--out creates a key; give it without a subcommand")
        return
    if prefix is None:
        raise click.UsageError("Missing option '--out'.")
    key_path, jwks_path = DevIdP.generate().save(prefix)
    click.echo(f"wrote {key_path} (private) and {jwks_path}: name it as identity.jwks_file in "
               "gateway.yaml, or serve it as identity.jwks_uri")


@dev_idp.command("serve")
@click.option("--idp", "idp_key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The dev IdP key written by gwc dev-idp --out (shared with gwc dev-token).")
@click.option("--listen", default="127.0.0.1:8400", show_default=True, help="HOST:PORT to listen on.")
@click.option("--allow-remote", is_flag=True,
              help="Listen on a non-loopback address: anyone who reaches it can log in as anyone.")
@click.option("--issuer", default=None, help="Issuer URL [default: http://HOST:PORT].")
@click.option("--users", "users_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML/JSON file, users: [{sub, groups, agent}] [default: the demo's users].")
@click.option("--client", "client_specs", multiple=True, metavar="ID:SECRET:REDIRECT_URI",
              help="An OAuth client; an empty SECRET makes a public client. Repeat.")
@click.option("--clients", "clients_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML/JSON file, clients: [{client_id, client_secret, redirect_uris}].")
@click.option("--groups-claim", default="groups", show_default=True, help="Claim that carries groups.")
def dev_idp_serve(idp_key: str, listen: str, allow_remote: bool, issuer: str | None,
                  users_file: Path | None, client_specs: tuple[str, ...], clients_file: Path | None,
                  groups_claim: str) -> None:
    """Run the dev IdP as a local OpenID Connect provider. NOT FOR PRODUCTION.

    Authorization code flow with PKCE S256; its login page lets anyone pick any configured user."""
    from gwc.compiler.client.dev_idp_config import DEFAULT_USERS, load_clients, load_users, parse_client

    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise click.BadParameter("expected HOST:PORT", param_hint="--listen")
    if not (is_loopback(host) or allow_remote):
        raise click.BadParameter(f"{host} is not a loopback address; a dev IdP logs anyone in as "
                                 "anyone (--allow-remote if you mean it)", param_hint="--listen")
    try:
        idp = DevIdP.load(idp_key)
        users = load_users(users_file) if users_file else DEFAULT_USERS
        clients = (*(load_clients(clients_file) if clients_file else ()),
                   *map(parse_client, client_specs))
    except (OSError, ValueError, KeyError) as exc:  # pydantic's ValidationError is a ValueError
        fail(f"cannot configure the dev IdP: {exc}")
    from aiohttp import web  # here: the offline commands must not load aiohttp

    from gwc.compiler.client.dev_idp_server import DevIdPServer

    bracketed = f"[{host}]" if ":" in host else host
    try:
        server = DevIdPServer(idp, issuer=issuer or f"http://{bracketed}:{port}", users=users,
                              clients=clients, groups_claim=groups_claim)
    except ValueError as exc:
        fail(f"cannot configure the dev IdP: {exc}")
    click.echo(f"development identity provider, NOT FOR PRODUCTION: {server.issuer} "
               f"({len(users)} users, clients: {', '.join(server.clients) or 'none'})", err=True)
    web.run_app(server.app(), host=host, port=int(port), print=None)


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
    from gwc.compiler.build.registry import load_gateway

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
