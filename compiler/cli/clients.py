"""``gwc client-config|session-key``: what connects an MCP client, and a fleet's session key."""
from __future__ import annotations

import json

import click

from gwc.compiler.client import configs as client_config


@click.command("client-config")
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

    The entry names the gateway's aggregate endpoint, <URL>/mcp. stdout is only the JSON; a hint on
    stderr says which file it goes into. No token goes in it: clients that implement MCP
    authorization sign in through the gateway on first use (it sends the browser to the company
    IdP, then asks for consent once).
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


@click.command("session-key")
def session_key() -> None:
    """Print a new random fleet session key.

    For gwc-runtime --session-keys (GWC_SESSION_KEYS): 32 bytes, URL-safe base64.
    """
    click.echo(client_config.new_session_key())


COMMANDS = [client_config_cmd, session_key]
