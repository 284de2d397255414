"""A node's settings: secrets from files as mounted secrets are (GWC_<NAME>_FILE), trimmed of the
newline such files end with, every bad file one clear start-up error; the fleet settings (drain,
metrics listener, the keys accepted during a signing-key rotation)."""
from __future__ import annotations

import base64
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from gwc.compiler.build.keys import generate_keypair
from gwc.runtime.config import ConfigError, load

REQUIRED = ["--bundle", "b.json", "--trust", "t.pem", "--signing-key", "k.pem",
            "--public-url", "https://gw.example"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GWC_SESSION_KEYS", "GWC_SESSION_KEYS_FILE", "GWC_STATE", "GWC_STATE_FILE",
                 "GWC_IDP_CLIENT_SECRET", "GWC_IDP_CLIENT_SECRET_FILE", "GWC_DRAIN_SECONDS",
                 "GWC_METRICS_LISTEN", "GWC_ACCEPT_KEY"):
        monkeypatch.delenv(name, raising=False)


def key() -> tuple[str, bytes]:
    raw = secrets.token_bytes(32)
    return base64.urlsafe_b64encode(raw).decode(), raw


def test_session_keys_state_and_idp_secret_come_from_files(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (first, first_raw), (second, second_raw) = key(), key()
    (tmp_path / "keys").write_text(f"{first},{second}\n")  # as `kubectl create secret --from-file`
    (tmp_path / "state").write_text("redis://:s3cret@redis.internal:6379/0\n")
    (tmp_path / "idp").write_text("  the-secret\n")
    monkeypatch.setenv("GWC_SESSION_KEYS_FILE", str(tmp_path / "keys"))
    monkeypatch.setenv("GWC_STATE_FILE", str(tmp_path / "state"))
    monkeypatch.setenv("GWC_IDP_CLIENT_SECRET_FILE", str(tmp_path / "idp"))
    config = load(REQUIRED)
    assert config.session_keys == (first_raw, second_raw)
    assert config.state == "redis://:s3cret@redis.internal:6379/0"
    assert config.idp_client_secret == "the-secret"


def test_a_value_in_the_environment_wins_over_a_file_and_is_trimmed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "state").write_text("redis://from-file:6379/0")
    monkeypatch.setenv("GWC_STATE_FILE", str(tmp_path / "state"))
    monkeypatch.setenv("GWC_STATE", "redis://from-env:6379/0\n")
    monkeypatch.setenv("GWC_IDP_CLIENT_SECRET", "the-secret\n")  # pasted with its newline
    config = load(REQUIRED)
    assert config.state == "redis://from-env:6379/0"
    assert config.idp_client_secret == "the-secret"


@pytest.mark.parametrize("content, message", [
    (None, "cannot read GWC_SESSION_KEYS_FILE"),
    ("\n", "GWC_SESSION_KEYS_FILE {path} is empty"),
    ("c2hvcnQ\n", "--session-keys: a session key must decode to 32 bytes"),
])
def test_a_bad_secret_file_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              content: str | None, message: str) -> None:
    path = tmp_path / "keys"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("GWC_SESSION_KEYS_FILE", str(path))
    with pytest.raises(ConfigError) as raised:
        load(REQUIRED)
    assert str(raised.value).startswith(message.format(path=path))


def test_drain_and_metrics_listener_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load(REQUIRED)
    assert (config.drain_s, config.metrics_host) == (0.0, None)
    monkeypatch.setenv("GWC_DRAIN_SECONDS", "7.5")
    monkeypatch.setenv("GWC_METRICS_LISTEN", "[::1]:9090")
    config = load(REQUIRED)
    assert (config.drain_s, config.metrics_host, config.metrics_port) == (7.5, "::1", 9090)
    for flags, message in ((["--drain-seconds", "-1"], "--drain-seconds must be between"),
                           (["--metrics-listen", "9090"], "--metrics-listen must be HOST:PORT"),
                           (["--audit-max-bytes", str((5 << 30) + 1)],
                            "--audit-max-bytes must be at most 5 GiB")):
        with pytest.raises(ConfigError, match=message):
            load([*REQUIRED, *flags])


def test_accepted_keys_come_from_flags_or_a_comma_separated_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert load(REQUIRED).accept_keys == ()
    monkeypatch.setenv("GWC_ACCEPT_KEY", "/keys/old.pub, /keys/next.pub")
    assert load(REQUIRED).accept_keys == (Path("/keys/old.pub"), Path("/keys/next.pub"))
    assert load([*REQUIRED, "--accept-key", "a.pub"]).accept_keys == (Path("a.pub"),)


@pytest.mark.parametrize("accepted", ["bundle", "not-a-key"])
def test_a_bundle_key_or_a_bad_file_is_never_an_accepted_key(tmp_path: Path, accepted: str) -> None:
    _, ci_pub, _ = generate_keypair(tmp_path / "ci")
    gateway_key, _, _ = generate_keypair(tmp_path / "gateway")
    (tmp_path / "junk.pub").write_text("not a key")
    started = subprocess.run(
        [sys.executable, "-c", "import sys; from gwc.runtime.cli import main; main(sys.argv[1:])",
         "--bundle", str(tmp_path / "bundle.json"), "--trust", str(ci_pub), "--signing-key",
         str(gateway_key), "--public-url", "http://127.0.0.1:1", "--audit", "none",
         "--accept-key", str(ci_pub if accepted == "bundle" else tmp_path / "junk.pub")],
        capture_output=True, text=True, timeout=60)
    assert started.returncode == 2
    expected = ("gwc-runtime: an --accept-key is a trusted bundle key" if accepted == "bundle"
                else f"gwc-runtime: --accept-key: {tmp_path / 'junk.pub'} is not a PEM public key")
    assert started.stderr.strip().splitlines()[-1].startswith(expected), started.stderr


def test_a_start_up_error_is_the_last_line_even_when_log_lines_are_still_queued() -> None:
    """Log lines are written by a thread of their own: a slow stderr must not let one of them
    land after the error that ends the node, where operators (and the tests above) look."""
    script = """
import logging, time
from gwc.runtime import cli, logs
emit = logging.StreamHandler.emit
def slow_emit(self, record):
    time.sleep(0.3)
    emit(self, record)
logging.StreamHandler.emit = slow_emit
logs.configure("info")
logging.getLogger("gwc.sessions").warning("queued before the error")
cli._fail("the error")
"""
    ended = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=60)
    assert ended.returncode == 2
    lines = ended.stderr.strip().splitlines()
    assert lines[-1] == "gwc-runtime: the error", ended.stderr
    assert '"msg":"queued before the error"' in lines[0]
