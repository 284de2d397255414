"""The ``gwc`` command line: validate, build, verify, inspect and diff bundles; pin tool definitions;
read audit trails; approvals and bypasses; client configs; the local bridge and signing in. One
module per group of commands, gathered here.

Exit codes: 0 success, 1 the input is invalid or a check failed, 2 usage error.
"""
from __future__ import annotations

import click

from gwc.compiler.cli import clients, connect, dev, pin, registry
from gwc.compiler.cli.admin import approvals, bypass
from gwc.compiler.cli.audit import audit


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gwc")
def main() -> None:
    """gwc: compile an MCP server registry into one signed bundle, and inspect bundles."""


for command in (*registry.COMMANDS, *pin.COMMANDS, audit, *dev.COMMANDS, *clients.COMMANDS,
                *connect.COMMANDS, approvals, bypass):
    main.add_command(command)
