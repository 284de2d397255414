"""The ``gwc`` command line: validate, build, verify, inspect and diff bundles; pin tool definitions;
read audit trails; approvals and bypasses; client configs; the local bridge and signing in. One
module per group of commands, gathered here.

A command's module is imported only when that command runs (``LazyGroup``): ``gwc validate`` does
not pay for the sign-in, the dev IdP, the audit tools or the bundle compiler. Heavy libraries are
imported inside the functions that use them, for the same reason (bench/startup.py measures it).

Exit codes: 0 success, 1 the input is invalid or a check failed, 2 usage error.
"""
from __future__ import annotations

import importlib
from gettext import gettext as _

import click

# name -> ("module:attribute" under gwc.compiler.cli, the one-line help `gwc --help` lists); the
# help is the command's own first sentence, kept here so that listing the commands imports none of
# them (tests/cli/test_startup.py checks that the two agree)
COMMANDS: dict[str, tuple[str, str]] = {
    "approvals": ("admin:approvals", "Approvals of calls to tools marked `approval: required`: list, "
                                     "show, approve, deny."),
    "audit": ("audit:audit", "Check and read the audit trails gwc-runtime writes."),
    "build": ("registry:build_cmd", "Validate, compile and sign the registry into one bundle."),
    "bypass": ("admin:bypass", "Break-glass bypasses (members of the break-glass group): open, list, "
                               "close."),
    "client-config": ("clients:client_config_cmd", "Print the config entry that connects an MCP client."),
    "codeowners": ("registry:codeowners", "Print CODEOWNERS lines: each owner team owns its manifests "
                                          "and policies/<team>/."),
    "connect": ("connect:connect", "Serve the gateway at URL to a local MCP client over stdio."),
    "dev-idp": ("dev:dev_idp", "Create a development identity provider key (for demos; production "
                               "trusts the company IdP)."),
    "dev-token": ("dev:dev_token", "Mint a bearer token from the dev IdP, for the issuer and audience "
                                   "in gateway.yaml."),
    "diff": ("bundles:diff", "Access changes between two bundles or registry folders (servers, tools, "
                              "who gains what)."),
    "inspect": ("bundles:inspect", "Summarize a bundle: servers, tools, and who can call what."),
    "keygen": ("bundles:keygen", "Generate an Ed25519 bundle-signing key pair."),
    "login": ("connect:login", "Sign in to a gateway in the browser, for gwc approvals, gwc bypass and "
                               "gwc connect."),
    "logout": ("connect:logout", "Sign out of a gateway: revoke the refresh token there and forget the "
                                 "stored tokens."),
    "pin": ("pin:pin", "Write registry/SERVER.tools.json: the upstream's definitions of the declared "
                       "tools."),
    "schema": ("registry:schema", "Write the JSON Schemas (draft 2020-12) of manifests, policy files "
                                  "and gateway.yaml."),
    "session-key": ("clients:session_key", "Print a new random fleet session key."),
    "validate": ("registry:validate", "Check manifests, policies and gateway.yaml; report every problem "
                                      "with file:line:column."),
    "verify": ("bundles:verify", "Check a bundle's signature against trusted keys, and that its "
                                  "payload is a known format."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported by name when invoked (or asked for), from ``COMMANDS``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attribute = COMMANDS[cmd_name][0].split(":")
            command = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Click's listing, with each one-line help from ``COMMANDS`` instead of the command."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        rows = [(name, click.Command(name, help=COMMANDS[name][1]).get_short_help_str(limit))
                for name in names]
        with formatter.section(_("Commands")):  # as click words it
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gwc")
def main() -> None:
    """gwc: compile an MCP server registry into one signed bundle, and inspect bundles."""
