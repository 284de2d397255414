"""`gwc pin` (issue 14) against a real MCP SDK upstream on 127.0.0.1 (tests/support/pin_upstream.py):
the lock's exact text, only declared tools, every page of tools/list, credentials really sent,
missing tools, and failures as one line and exit 1."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gwc.compiler.build.locks import lock_path, render_lock
from gwc.runtime.bundle import layout
from gwc.runtime.bundle.tool_definitions import definition_digest
from tests.support.e2e import free_port, running_upstream
from tests.support.helpers import GATEWAY, write_registry
from tests.support.helpers import gwc as run_gwc

DECLARED = {"deploy": {"access": "write", "approval": "none"}, "get_status": {"access": "read"},
            "list_services": {"access": "read"}}  # internal_debug, which it also lists, is not
API_KEY_ENV = "PIN_TEST_API_KEY"


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """The open endpoint; ``guarded(upstream)`` is the one behind a credential."""
    with running_upstream("pin_upstream.py") as url:
        yield url


def guarded(url: str) -> str:
    return url.replace("/mcp", "/guarded/mcp")


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GWC_PIN_TOKEN", raising=False)
    monkeypatch.delenv(API_KEY_ENV, raising=False)


def registry(root: Path, upstream: str, tools: dict[str, Any] = DECLARED, **fields: Any) -> Path:
    return write_registry(root, gateway=GATEWAY, manifests={"deploy.yaml": {
        "name": "deploy", "owner": "platform", "upstream": upstream, "visibility": "team:platform",
        "tools": tools, **fields}})


def gwc(*args: Any, env: dict[str, str] | None = None) -> Any:
    result = run_gwc(*args, env=env)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def lock_of(root: Path) -> dict[str, Any]:
    return json.loads(lock_path(root, "deploy").read_text())


def test_pin_writes_the_declared_tools_as_listed(upstream: str, tmp_path: Path, snapshot) -> None:
    root = registry(tmp_path, upstream)
    result = gwc("pin", "deploy", "--root", root)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"deploy: 3 of 3 declared tools read from {upstream}",
        "  added      deploy", "  added      get_status", "  added      list_services",
        f"wrote {lock_path(root, 'deploy')}: review the change and commit it"]
    text = lock_path(root, "deploy").read_text()
    assert text == snapshot
    # list_services and internal_debug are on the upstream's second page: read, and only the
    # declared one written
    assert sorted(lock_of(root)["tools"]) == ["deploy", "get_status", "list_services"]
    assert text == render_lock("deploy", lock_of(root)["tools"])


def test_a_pinned_registry_validates_and_builds(upstream: str, tmp_path: Path,
                                                signing_key) -> None:
    """pin: required with no lock yet is what gwc pin fixes, not a reason to refuse; its lock
    then passes validation and its definitions and digests go into the bundle."""
    root = registry(tmp_path / "repo", upstream, pin="required")
    assert gwc("validate", root).exit_code == 1  # not-pinned
    assert gwc("pin", "deploy", "--root", root).exit_code == 0
    assert gwc("validate", root).exit_code == 0
    built = gwc("build", root, "--key", signing_key[0], "--out", tmp_path / "dist", "--serial", "1")
    assert built.exit_code == 0, built.stderr
    env = json.loads((tmp_path / "dist" / "bundle.json").read_bytes())
    payload = layout.document(env["payloadType"], base64.b64decode(env["payload"]))
    pinned = {name: tool["pinned"] for name, tool in payload["servers"]["deploy"]["tools"].items()}
    assert {name: pin["definition"] for name, pin in pinned.items()} == lock_of(root)["tools"]
    assert all(pin["digest"] == definition_digest(pin["definition"]) for pin in pinned.values())


def test_a_second_pin_says_what_changed(upstream: str, tmp_path: Path) -> None:
    root = registry(tmp_path, upstream)
    assert gwc("pin", "deploy", "--root", root).exit_code == 0
    tools = lock_of(root)["tools"]
    tools["deploy"]["description"] = "Deploy a service."
    tools["deploy"]["inputSchema"]["properties"]["replicas"]["type"] = "string"
    tools["retired"] = tools.pop("get_status")
    lock_path(root, "deploy").write_text(render_lock("deploy", tools))
    result = gwc("pin", "deploy", "--root", root)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        "  changed    deploy: description, inputSchema", "  added      get_status",
        "  unchanged  list_services", "  removed    retired",
        f"wrote {lock_path(root, 'deploy')}: review the change and commit it"]
    written = lock_path(root, "deploy").stat()
    again = gwc("pin", "deploy", "--root", root)
    assert again.exit_code == 0
    assert again.stdout.splitlines()[-1] == f"{lock_path(root, 'deploy')} is up to date"
    assert lock_path(root, "deploy").stat().st_mtime_ns == written.st_mtime_ns


def test_an_unreadable_previous_lock_is_replaced(upstream: str, tmp_path: Path) -> None:
    root = registry(tmp_path, upstream)
    lock_path(root, "deploy").write_text("{not json")
    result = gwc("pin", "deploy", "--root", root)
    assert result.exit_code == 0, result.stderr
    assert "could not be read" in result.stdout
    assert sorted(lock_of(root)["tools"]) == ["deploy", "get_status", "list_services"]


def test_the_static_env_credential_is_sent(upstream: str, tmp_path: Path) -> None:
    root = registry(tmp_path, guarded(upstream), upstream_auth={
        "type": "static_env", "env": API_KEY_ENV, "header": "X-Api-Key", "scheme": "Key"})
    unset = gwc("pin", "deploy", "--root", root)
    assert unset.exit_code == 1
    assert unset.stderr == (f"gwc: server 'deploy' authenticates to its upstream with ${API_KEY_ENV} "
                            "(upstream_auth: static_env): set it, or GWC_PIN_TOKEN\n")
    wrong = gwc("pin", "deploy", "--root", root, env={API_KEY_ENV: "guess"})
    assert wrong.exit_code == 1 and "answered HTTP 401" in wrong.stderr
    assert not lock_path(root, "deploy").exists()
    right = gwc("pin", "deploy", "--root", root, env={API_KEY_ENV: "s3cret"})
    assert right.exit_code == 0, right.stderr
    assert sorted(lock_of(root)["tools"]) == ["deploy", "get_status", "list_services"]


def test_gwc_pin_token_is_sent_as_a_bearer_token(upstream: str, tmp_path: Path) -> None:
    root = registry(tmp_path, guarded(upstream))  # gateway_jwt: nothing to send of its own
    without = gwc("pin", "deploy", "--root", root)
    assert without.exit_code == 1
    assert without.stderr == (f"gwc: {guarded(upstream)} answered HTTP 401 (the credential was "
                              "missing or refused: GWC_PIN_TOKEN sets one)\n")
    with_token = gwc("pin", "deploy", "--root", root, env={"GWC_PIN_TOKEN": "pin-token"})
    assert with_token.exit_code == 0, with_token.stderr


def test_gwc_pin_token_comes_before_static_env(upstream: str, tmp_path: Path) -> None:
    root = registry(tmp_path, guarded(upstream), upstream_auth={"type": "static_env",
                                                                "env": API_KEY_ENV})
    result = gwc("pin", "deploy", "--root", root,
                 env={"GWC_PIN_TOKEN": "pin-token", API_KEY_ENV: "production-secret"})
    assert result.exit_code == 0, result.stderr


def test_a_declared_tool_the_upstream_does_not_list(upstream: str, tmp_path: Path) -> None:
    root = registry(tmp_path, upstream, {**DECLARED, "frobnicate": {"access": "read"}})
    refused = gwc("pin", "deploy", "--root", root)
    assert refused.exit_code == 1
    assert refused.stderr == (f"gwc: {upstream} does not list 1 tool(s) that server 'deploy' "
                              "declares: frobnicate; nothing written (--allow-missing pins the "
                              "others)\n")
    assert not lock_path(root, "deploy").exists()
    allowed = gwc("pin", "deploy", "--root", root, "--allow-missing")
    assert allowed.exit_code == 0, allowed.stderr
    assert allowed.stdout.splitlines()[0] == f"deploy: 3 of 4 declared tools read from {upstream}"
    assert "  missing    frobnicate: not listed by the upstream, not pinned" in allowed.stdout
    assert sorted(lock_of(root)["tools"]) == ["deploy", "get_status", "list_services"]


def test_upstream_option_reads_another_endpoint(upstream: str, tmp_path: Path) -> None:
    root = registry(tmp_path, "https://deploy.internal/mcp")
    result = gwc("pin", "deploy", "--root", root, "--upstream", upstream)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"deploy: 3 of 3 declared tools read from {upstream}\n")
    bad = gwc("pin", "deploy", "--root", root, "--upstream", "file:///etc/passwd")
    assert bad.exit_code == 1 and "--upstream must be an http(s) URL" in bad.stderr


def test_an_unreachable_upstream_is_one_line_and_exit_1(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    root = registry(tmp_path, url)
    result = gwc("pin", "deploy", "--root", root)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith(f"gwc: cannot reach {url}: ")
    assert result.stderr.count("\n") == 1
    assert not lock_path(root, "deploy").exists()


def test_a_manifest_that_does_not_load(tmp_path: Path) -> None:
    root = registry(tmp_path, "https://deploy.internal/mcp", tools={"deploy": {"access": "sudo"}})
    result = gwc("pin", "deploy", "--root", root)
    assert result.exit_code == 1 and "registry/deploy.yaml:" in result.stderr
    unknown = gwc("pin", "billing", "--root", root)
    assert unknown.exit_code == 1
    assert unknown.stderr == f"gwc: no server 'billing' in {root / 'registry'}\n"


def test_the_gwc_command_loads_the_mcp_sdk_only_for_pin() -> None:
    code = ("import sys, gwc.compiler.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'mcp', 'httpx2', 'anyio'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
