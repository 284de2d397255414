"""`gwc build` and `gwc keygen`: reproducible, content-addressed, signed output; serial and revision."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gwc.compiler.build.bundle import BuildError, build, default_revision, default_serial
from gwc.compiler.build.keys import KeyFileError, generate_keypair, load_private_key
from gwc.compiler.build.registry import load_registry
from gwc.runtime.bundle.read import load_bundle, read_unverified, trusted_keys
from tests.support.helpers import gwc, load_ok, manifest, write_registry

COMMIT_DATE = "2024-01-02T03:04:05+00:00"
COMMIT_EPOCH = int(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp())


@pytest.fixture(autouse=True)
def _no_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def git(root: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.com",
           "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.com",
           "GIT_AUTHOR_DATE": COMMIT_DATE, "GIT_COMMITTER_DATE": COMMIT_DATE,
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    out = subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                         text=True, env=env)
    return out.stdout.strip()


def git_repo(root: Path) -> str:
    """Commit everything under ``root`` (a fresh repo) and return the commit sha."""
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "registry")
    return git(root, "rev-parse", "HEAD")


def build_cli(root: Path, key: Path, out: Path, *extra: str, env: dict | None = None):
    return gwc("build", root, "--key", key, "--out", out, *extra, env=env)


# --- reproducibility and content addressing ------------------------------------------------------------

def test_same_inputs_give_byte_identical_bundles(example_root: Path, signing_key, tmp_path: Path) -> None:
    key_path = signing_key[0]
    a = build_cli(example_root, key_path, tmp_path / "a", "--serial", "42", "--revision", "abc")
    b = build_cli(example_root, key_path, tmp_path / "b", "--serial", "42", "--revision", "abc")
    assert a.exit_code == b.exit_code == 0, a.stderr
    first = (tmp_path / "a" / "bundle.json").read_bytes()
    assert first == (tmp_path / "b" / "bundle.json").read_bytes()
    assert a.stdout.splitlines()[0] == "sha256:" + hashlib.sha256(first).hexdigest()


def test_serial_or_revision_changes_the_bundle(example_root: Path, signing_key, tmp_path: Path) -> None:
    registry, key = load_ok(example_root), signing_key[2]
    base = build(registry, key, tmp_path / "a", 42, "abc").envelope
    assert build(registry, key, tmp_path / "b", 43, "abc").envelope != base
    assert build(registry, key, tmp_path / "c", 42, "abd").envelope != base


def test_content_addressed_copy(example_root: Path, signing_key, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = build_cli(example_root, signing_key[0], out, "--serial", "1", "--revision", "r")
    assert result.exit_code == 0
    pointer = (out / "bundle.json").read_bytes()
    addressed = list((out / "bundles").iterdir())
    assert len(addressed) == 1
    assert addressed[0].read_bytes() == pointer
    assert addressed[0].name == hashlib.sha256(pointer).hexdigest() + ".json"
    assert f"wrote {out / 'bundle.json'} and {addressed[0]}" in result.stdout
    # A second serial adds a second immutable copy and moves the pointer.
    build_cli(example_root, signing_key[0], out, "--serial", "2", "--revision", "r")
    assert len(list((out / "bundles").iterdir())) == 2
    assert (out / "bundle.json").read_bytes() != pointer
    assert (out / "bundles" / addressed[0].name).read_bytes() == pointer


def test_built_bundle_verifies_and_carries_serial_and_revision(example_root: Path, signing_key,
                                                               tmp_path: Path) -> None:
    built = build(load_ok(example_root), signing_key[2], tmp_path / "out", 9, "rev-9")
    loaded = load_bundle(built.path.read_bytes(), trusted_keys([str(signing_key[1])]))
    assert (loaded.serial, loaded.payload.revision, loaded.digest) == (9, "rev-9", built.digest)
    assert loaded.payload == built.payload


def test_source_digest_depends_on_sources_not_serial(example_root: Path, signing_key,
                                                     tmp_path: Path) -> None:
    key = signing_key[2]
    a = build(load_ok(example_root), key, tmp_path / "a", 1, "r").payload.source_digest
    b = build(load_ok(example_root), key, tmp_path / "b", 2, "s").payload.source_digest
    (example_root / "registry" / "incidents.yaml").write_text(
        (example_root / "registry" / "incidents.yaml").read_text() + "# a comment\n")
    c = build(load_ok(example_root), key, tmp_path / "c", 1, "r").payload.source_digest
    assert a == b != c


# --- serial and revision defaults ---------------------------------------------------------------------

def test_default_serial_and_revision_from_git(tmp_path: Path, signing_key) -> None:
    root = write_registry(tmp_path / "repo")
    sha = git_repo(root)
    assert default_serial(root) == COMMIT_EPOCH
    assert default_revision(root) == sha
    result = build_cli(root, signing_key[0], tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert f"serial {COMMIT_EPOCH}  revision {sha}\n" in result.stdout
    payload = read_unverified((tmp_path / "out" / "bundle.json").read_bytes()).payload
    assert (payload.serial, payload.revision) == (COMMIT_EPOCH, sha)


def test_git_commit_time_wins_over_source_date_epoch(tmp_path: Path, monkeypatch) -> None:
    root = write_registry(tmp_path / "repo")
    git_repo(root)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "5")
    assert default_serial(root) == COMMIT_EPOCH


@pytest.mark.parametrize("change", ["modify", "untracked"])
def test_revision_is_dirty_with_uncommitted_changes(tmp_path: Path, change: str) -> None:
    root = write_registry(tmp_path / "repo")
    sha = git_repo(root)
    if change == "modify":
        (root / "registry" / "svc.yaml").write_text(
            (root / "registry" / "svc.yaml").read_text() + "description: changed\n")
    else:
        (root / "policies" / "team-a").mkdir(parents=True)
        (root / "policies" / "team-a" / "new.yaml").write_text("[]\n")
    assert default_revision(root) == sha + "-dirty"


def test_untracked_files_outside_the_inputs_do_not_make_the_revision_dirty(
        tmp_path: Path, signing_key) -> None:
    root = write_registry(tmp_path / "repo")
    sha = git_repo(root)
    (root / "ci.key").write_text("not an input\n")
    (root / "scratch").mkdir()
    (root / "scratch" / "notes.yaml").write_text("x: 1\n")
    registry = load_registry(root)
    assert default_revision(root, registry.input_paths()) == sha
    (root / "registry" / "extra.yaml").write_text("name: extra\n")
    assert default_revision(root, registry.input_paths()) == sha + "-dirty"


def test_outside_git_without_serial_is_a_clear_error(tmp_path: Path, signing_key) -> None:
    root = write_registry(tmp_path / "plain")
    with pytest.raises(BuildError, match="SOURCE_DATE_EPOCH is unset; pass --serial N"):
        default_serial(root)
    assert default_revision(root) == "unversioned"
    result = build_cli(root, signing_key[0], tmp_path / "out")
    assert result.exit_code == 1
    assert "gwc: cannot choose a serial: the registry is not in a git checkout" in result.stderr
    assert not (tmp_path / "out" / "bundle.json").exists()


def test_source_date_epoch_gives_the_serial(tmp_path: Path, signing_key) -> None:
    root = write_registry(tmp_path / "plain")
    result = build_cli(root, signing_key[0], tmp_path / "out", env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert result.exit_code == 0, result.stderr
    payload = read_unverified((tmp_path / "out" / "bundle.json").read_bytes()).payload
    assert (payload.serial, payload.revision) == (1700000000, "unversioned")


def test_explicit_serial_wins(tmp_path: Path, signing_key) -> None:
    root = write_registry(tmp_path / "plain")
    result = build_cli(root, signing_key[0], tmp_path / "out", "--serial", "3",
                       env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert result.exit_code == 0
    assert read_unverified((tmp_path / "out" / "bundle.json").read_bytes()).serial == 3


def test_payload_option_chooses_the_encoding_both_load_to_the_same_payload(example_root: Path,
                                                                           signing_key,
                                                                           tmp_path: Path) -> None:
    types = {}
    for encoding in ("lines", "json", None):
        extra = ("--payload", encoding) if encoding else ()
        result = build_cli(example_root, signing_key[0], tmp_path / str(encoding), "--serial", "4",
                           *extra)
        assert result.exit_code == 0, result.stderr
        data = (tmp_path / str(encoding) / "bundle.json").read_bytes()
        types[encoding] = json.loads(data)["payloadType"]
        loaded = load_bundle(data, trusted_keys([str(signing_key[1])]))
        assert loaded.payload == read_unverified((tmp_path / "lines" / "bundle.json").read_bytes()).payload
    assert types == {"lines": "application/vnd.gwc.bundle+jsonl", None: types["lines"],
                     "json": "application/vnd.gwc.bundle+json"}
    assert build_cli(example_root, signing_key[0], tmp_path / "x", "--payload", "xml").exit_code == 2


def test_negative_serial_is_a_usage_error(tmp_path: Path, signing_key) -> None:
    root = write_registry(tmp_path / "plain")
    assert build_cli(root, signing_key[0], tmp_path / "out", "--serial", "-1").exit_code == 2


# --- refusing to build ---------------------------------------------------------------------------------

def test_build_refuses_an_invalid_registry_with_validate_messages(tmp_path: Path, signing_key) -> None:
    root = write_registry(tmp_path / "bad", manifests={
        "svc.yaml": manifest(upstream="http://10.0.0.1/mcp", tools={"t": {"access": "execute"}}),
        "other.yaml": manifest("other", visibility=["bogus"])})
    validate = gwc("validate", root)
    result = build_cli(root, signing_key[0], tmp_path / "out", "--serial", "1")
    assert validate.exit_code == result.exit_code == 1
    assert result.stderr == validate.stdout
    assert "unknown access 'execute'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_build_with_warnings_succeeds_and_says_so(tmp_path: Path, signing_key) -> None:
    root = write_registry(tmp_path / "r", manifests={"other.yaml": manifest()})
    result = build_cli(root, signing_key[0], tmp_path / "out", "--serial", "1")
    assert result.exit_code == 0
    assert "1 warning(s) (gwc validate lists them)" in result.stdout


@pytest.mark.parametrize("content, message", [
    (None, "cannot read signing key"),
    (b"not a key", "is not an unencrypted PEM private key"),
])
def test_build_refuses_a_bad_key(tmp_path: Path, content: bytes | None, message: str) -> None:
    root = write_registry(tmp_path / "r")
    key = tmp_path / "ci.key"
    if content is not None:
        key.write_bytes(content)
    result = build_cli(root, key, tmp_path / "out", "--serial", "1")
    assert result.exit_code == 1 and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_non_ed25519_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "ec.key").write_bytes(pem)
    with pytest.raises(KeyFileError, match="is not an Ed25519 key"):
        load_private_key(tmp_path / "ec.key")


# --- keygen --------------------------------------------------------------------------------------------

def test_keygen_writes_a_private_key_with_mode_0600(tmp_path: Path) -> None:
    result = gwc("keygen", "--out", tmp_path / "keys" / "ci")
    assert result.exit_code == 0
    key, pub = tmp_path / "keys" / "ci.key", tmp_path / "keys" / "ci.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    loaded = load_private_key(key)
    keyid = next(iter(trusted_keys([str(pub)])))
    assert f"key id {keyid}" in result.stdout
    trusted = next(iter(trusted_keys([str(pub)]).values()))
    assert loaded.public_key().public_bytes_raw() == trusted.public_bytes_raw()


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    prefix = tmp_path / "ci"
    generate_keypair(prefix)
    before = (tmp_path / "ci.key").read_bytes()
    result = gwc("keygen", "--out", prefix)
    assert result.exit_code == 1
    assert "exists; pass --force to overwrite" in result.stderr
    assert (tmp_path / "ci.key").read_bytes() == before


def test_keygen_refuses_when_only_the_public_key_exists(tmp_path: Path) -> None:
    (tmp_path / "ci.pub").write_text("keep me")
    assert gwc("keygen", "--out", tmp_path / "ci").exit_code == 1
    assert (tmp_path / "ci.pub").read_text() == "keep me" and not (tmp_path / "ci.key").exists()


def test_keygen_force_overwrites_and_keeps_0600(tmp_path: Path) -> None:
    prefix = tmp_path / "ci"
    generate_keypair(prefix)
    os.chmod(tmp_path / "ci.key", 0o644)
    before = (tmp_path / "ci.key").read_bytes()
    assert gwc("keygen", "--out", prefix, "--force").exit_code == 0
    assert (tmp_path / "ci.key").read_bytes() != before
    assert stat.S_IMODE((tmp_path / "ci.key").stat().st_mode) == 0o600
