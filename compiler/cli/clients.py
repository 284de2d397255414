"""``gwc client-config|session-key``: what connects an MCP client, and a fleet's session key."""
from __future__ import annotations

import json
import os

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
@click.option("--bridge", type=click.Choice(client_config.BRIDGES), default=None,
              help="A stdio entry that starts a bridge: gwc (gwc connect; the default for "
                   "claude-desktop) or mcp-remote (npx). Without it, clients that speak "
                   "Streamable HTTP get the URL.")
@click.option("--command", "command", default=None, metavar="PATH",
              help="How the entry names gwc for --bridge gwc. Default: the absolute path of "
                   "this gwc (clients such as Claude Desktop do not search the shell's PATH); "
                   "give `gwc` for the bare name.")
def client_config_cmd(gateway: str, client: str, name: str, allow_http: bool,
                      bridge: str | None, command: str | None) -> None:
    """Print the config entry that connects an MCP client.

    The entry names the gateway's aggregate endpoint, <URL>/mcp, or, for clients that start only
    local servers (Claude Desktop), a bridge to it: `gwc connect <URL>` by default. stdout is only
    the JSON; a hint on stderr says which file it goes into. No token goes in it: clients sign in
    through the gateway on first use (it sends the browser to the company IdP, then asks for
    consent once).
    """
    try:
        endpoint = client_config.endpoint(gateway, name, allow_http)
    except client_config.ClientConfigError as exc:
        raise click.BadParameter(str(exc), param_hint=f"'{exc.option}'") from None
    if command is not None and bridge not in (None, "gwc"):
        raise click.BadParameter("--command names gwc, for --bridge gwc", param_hint="'--command'")
    shape = client_config.CLIENTS[client]
    rendered = client_config.render(client, endpoint, bridge, command)
    click.echo(json.dumps(rendered, indent=2))
    started = bridge or ("gwc" if shape.entry is None else None)
    needs = {"gwc": "; signs in in the browser at first use (gwc connect)",
             "mcp-remote": "; needs Node.js for npx (mcp-remote)"}.get(started or "", "")
    click.echo(f"{shape.title}: {shape.where}{needs}", err=True)
    if started == "gwc" and command is None and not os.path.isabs(
            client_config.running_gwc()):
        click.echo("warning: gwc was not found by path; the entry says `gwc`, which the client "
                   "must find on its own PATH (or give --command)", err=True)
    if endpoint.cleartext:
        click.echo("warning: plain http to another host: tokens travel unencrypted", err=True)


@click.command("session-key")
def session_key() -> None:
    """Print a new random fleet session key.

    For gwc-runtime --session-keys (GWC_SESSION_KEYS): 32 bytes, URL-safe base64.
    """
    click.echo(client_config.new_session_key())
