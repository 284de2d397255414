"""`gwc client-config` and `gwc session-key`, run as the CLI: what a user pastes into a client."""
from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import pytest

from gwc.compiler.client.configs import running_gwc
from tests.support.helpers import gwc

GATEWAY = "https://mcp.acme.example"
ENDPOINT = "https://mcp.acme.example/mcp"


def config(*args: str) -> dict:
    """Run `gwc client-config`; it must succeed with pure JSON on stdout and a hint on stderr."""
    result = gwc("client-config", *args)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip(), "a hint saying where the entry goes is printed on stderr"
    return json.loads(result.stdout)


def refused(*args: str) -> str:
    """Run `gwc client-config`; it must be a usage error (exit 2) with nothing on stdout."""
    result = gwc("client-config", *args)
    assert result.exit_code == 2, result.stdout
    assert result.stdout == ""
    return result.stderr


def test_claude_desktop_bridges_through_gwc_connect_by_its_absolute_path() -> None:
    result = gwc("client-config", "--gateway", GATEWAY, "--client", "claude-desktop")
    entry = json.loads(result.stdout)["mcpServers"]["gwc"]
    assert entry["args"] == ["connect", GATEWAY]  # the base URL: gwc connect adds /mcp
    # Claude Desktop starts servers without the shell's PATH: the gwc running now, by path
    command = Path(entry["command"])
    assert command.is_absolute() and command.name == "gwc" and os.access(command, os.X_OK)
    assert "gwc connect" in result.stderr


def test_the_bare_command_or_mcp_remote_on_request() -> None:
    assert config("--gateway", GATEWAY, "--client", "claude-desktop", "--command", "gwc") == {
        "mcpServers": {"gwc": {"command": "gwc", "args": ["connect", GATEWAY]}}}
    result = gwc("client-config", "--gateway", GATEWAY, "--client", "claude-desktop",
                 "--bridge", "mcp-remote")
    assert json.loads(result.stdout) == {"mcpServers": {"gwc": {
        "command": "npx", "args": ["-y", "mcp-remote", ENDPOINT]}}}
    assert "Node.js" in result.stderr
    assert "--command" in refused("--gateway", GATEWAY, "--bridge", "mcp-remote",
                                  "--command", "gwc")


def test_the_running_gwc_is_found_beside_python_then_on_path(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = tmp_path / "bin" / "gwc"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "argv", [str(script)])
    assert running_gwc() == str(script)  # the script being run
    monkeypatch.setattr(sys, "argv", ["-c"])
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    assert running_gwc() == str(script)  # beside this Python
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert running_gwc() == "gwc"
    result = gwc("client-config", "--gateway", GATEWAY, "--client", "claude-desktop")
    assert "was not found by path" in result.stderr


@pytest.mark.parametrize(("client", "entry"), [
    ("cursor", {"mcpServers": {"gwc": {"command": "gwc", "args": ["connect", GATEWAY]}}}),
    ("vscode", {"servers": {"gwc": {"type": "stdio", "command": "gwc",
                                    "args": ["connect", GATEWAY]}}}),
    ("generic", {"name": "gwc", "transport": "stdio", "command": "gwc",
                 "args": ["connect", GATEWAY]}),
])
def test_other_clients_take_the_bridge_on_request(client: str, entry: dict) -> None:
    assert config("--gateway", GATEWAY, "--client", client, "--bridge", "gwc",
                  "--command", "gwc") == entry


def test_cursor_entry_is_a_url() -> None:
    assert config("--gateway", GATEWAY, "--client", "cursor") == {
        "mcpServers": {"gwc": {"url": ENDPOINT}}}


def test_vscode_entry_is_under_servers_with_type_http() -> None:
    assert config("--gateway", GATEWAY, "--client", "vscode") == {
        "servers": {"gwc": {"type": "http", "url": ENDPOINT}}}


def test_generic_is_the_default_and_names_the_transport() -> None:
    assert config("--gateway", GATEWAY) == {
        "name": "gwc", "transport": "streamable-http", "url": ENDPOINT}


@pytest.mark.parametrize("client", ["claude-desktop", "cursor", "vscode", "generic"])
def test_output_is_pretty_json_with_two_space_indent(client: str) -> None:
    result = gwc("client-config", "--gateway", GATEWAY, "--client", client)
    doc = json.loads(result.stdout)
    assert result.stdout == json.dumps(doc, indent=2) + "\n"
    assert (GATEWAY if client == "claude-desktop" else ENDPOINT) in result.stdout


@pytest.mark.parametrize(("client", "where"), [
    ("claude-desktop", "claude_desktop_config.json"), ("cursor", ".cursor/mcp.json"),
    ("vscode", ".vscode/mcp.json")])
def test_hint_on_stderr_names_the_file(client: str, where: str) -> None:
    result = gwc("client-config", "--gateway", GATEWAY, "--client", client)
    assert where in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_name_is_the_entry_key() -> None:
    assert config("--gateway", GATEWAY, "--client", "cursor", "--name", "acme-tools") == {
        "mcpServers": {"acme-tools": {"url": ENDPOINT}}}
    assert config("--gateway", GATEWAY, "--name", "acme_2")["name"] == "acme_2"


@pytest.mark.parametrize(("gateway", "url"), [
    ("https://mcp.acme.example/", ENDPOINT),
    ("https://mcp.acme.example//", ENDPOINT),
    ("https://mcp.acme.example:8443", "https://mcp.acme.example:8443/mcp"),
    ("https://acme.example/gateway/", "https://acme.example/gateway/mcp"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080/mcp"),
    ("http://localhost:8080/", "http://localhost:8080/mcp"),
    ("http://[::1]:8080", "http://[::1]:8080/mcp"),
])
def test_endpoint_is_the_base_url_plus_mcp(gateway: str, url: str) -> None:
    assert config("--gateway", gateway, "--client", "cursor")["mcpServers"]["gwc"]["url"] == url


@pytest.mark.parametrize(("gateway", "message"), [
    ("mcp.acme.example", "not an absolute http(s) URL"),
    ("ftp://mcp.acme.example", "not an absolute http(s) URL"),
    ("https://", "not an absolute http(s) URL"),
    ("https://:8080/", "not an absolute http(s) URL"),
    ("https://mcp.acme.example:99999", "not a valid URL"),
    ("https://mcp.acme.example:port", "not a valid URL"),
    ("https://alice:s3cret@mcp.acme.example", "carries credentials"),
    ("https://token@mcp.acme.example", "carries credentials"),
    ("https://mcp.acme.example/?tenant=a", "query or fragment"),
    ("https://mcp.acme.example/#x", "query or fragment"),
    ("https://mcp.acme.example?", "query or fragment"),
    ("https://mcp.acme.example/mcp", "looks like the endpoint itself"),
    ("https://mcp.acme.example/servers/deploy/mcp/", "looks like the endpoint itself"),
    ("https://mcp.acme .example", "spaces or control characters"),
    ("https://mcp.acme.example\n", "spaces or control characters"),
])
def test_bad_gateway_urls_are_usage_errors(gateway: str, message: str) -> None:
    stderr = refused("--gateway", gateway, "--client", "cursor")
    assert "Invalid value for '--gateway'" in stderr
    assert message in stderr


def test_credentials_are_not_echoed_back() -> None:
    assert "s3cret" not in refused("--gateway", "https://alice:s3cret@mcp.acme.example")


@pytest.mark.parametrize("gateway", ["http://mcp.acme.example", "http://10.0.0.7:8080",
                                     "http://127.0.0.1.nip.io"])
def test_http_to_a_non_loopback_host_is_refused(gateway: str) -> None:
    stderr = refused("--gateway", gateway)
    assert "must use https" in stderr and "--allow-http" in stderr


@pytest.mark.parametrize(("bridge", "args"), [
    # mcp-remote refuses http:// itself for anything but localhost/127.0.0.1 without its own flag
    ("mcp-remote", ["-y", "mcp-remote", "http://10.0.0.7:8080/mcp", "--allow-http"]),
    ("gwc", ["connect", "http://10.0.0.7:8080", "--allow-http"]),
])
def test_allow_http_permits_it_with_a_warning_and_tells_the_bridge(bridge: str,
                                                                   args: list[str]) -> None:
    result = gwc("client-config", "--gateway", "http://10.0.0.7:8080", "--client",
                 "claude-desktop", "--allow-http", "--bridge", bridge)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["mcpServers"]["gwc"]["args"] == args
    assert "unencrypted" in result.stderr


def test_loopback_http_needs_no_gwc_flag_and_warns_nothing() -> None:
    result = gwc("client-config", "--gateway", "http://[::1]:8080", "--client", "claude-desktop",
                 "--bridge", "mcp-remote")
    assert result.exit_code == 0, result.stderr
    assert "--allow-http" in json.loads(result.stdout)["mcpServers"]["gwc"]["args"]
    assert "unencrypted" not in result.stderr
    connect = config("--gateway", "http://[::1]:8080", "--client", "claude-desktop")
    assert connect["mcpServers"]["gwc"]["args"] == ["connect", "http://[::1]:8080"]


@pytest.mark.parametrize("bridge", ["gwc", "mcp-remote"])
def test_https_never_gets_allow_http(bridge: str) -> None:
    doc = config("--gateway", GATEWAY, "--client", "claude-desktop", "--allow-http",
                 "--bridge", bridge)
    assert "--allow-http" not in doc["mcpServers"]["gwc"]["args"]


@pytest.mark.parametrize("name", ["", "1gwc", "-gwc", "g w c", "gwc.prod", "gwc/prod", "x" * 33,
                                  "gwç"])
def test_bad_names_are_usage_errors(name: str) -> None:
    assert "Invalid value for '--name'" in refused("--gateway", GATEWAY, "--name", name)


def test_unknown_client_is_a_usage_error() -> None:
    assert "claude-code" in refused("--gateway", GATEWAY, "--client", "claude-code")


def test_gateway_is_required() -> None:
    assert "--gateway" in refused("--client", "cursor")


def test_session_key_is_32_random_bytes_in_urlsafe_base64() -> None:
    first, second = gwc("session-key"), gwc("session-key")
    assert first.exit_code == second.exit_code == 0
    keys = []
    for result in (first, second):
        assert result.stdout.endswith("\n") and result.stdout.count("\n") == 1
        key = result.stdout.strip()
        assert len(key) == 44 and key.endswith("=")
        assert set(key) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")
        assert len(base64.urlsafe_b64decode(key)) == 32
        keys.append(key)
    assert keys[0] != keys[1]
