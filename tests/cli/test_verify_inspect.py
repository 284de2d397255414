"""`gwc verify` / gwc.runtime.bundle.read: what a runtime accepts and refuses; `gwc inspect`; runtime
isolation."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gwc.compiler.build.bundle import build
from gwc.compiler.build.compile import compile_registry
from gwc.compiler.build.keys import generate_keypair
from gwc.runtime.bundle import layout
from gwc.runtime.bundle.canonical import canonical_json
from gwc.runtime.bundle.envelope import BUNDLE_LINES_TYPE, key_id, sign_envelope
from gwc.runtime.bundle.read import BundleError, load_bundle, parse_payload, trusted_keys
from tests.support.helpers import gwc, load_ok
from tests.support.repo import REPO


@pytest.fixture(params=["lines", "json"])
def bundle(request, example_root: Path, signing_key, tmp_path: Path) -> Path:
    """The example registry built and signed with ``signing_key`` (serial 7, revision r7), its
    payload in either encoding: lines (what gwc build writes) or one JSON document (every bundle
    built before issue 15, a node's persisted copy of one, say)."""
    return build(load_ok(example_root), signing_key[2], tmp_path / "out", 7, "r7",
                 request.param).path


def envelope(path: Path) -> dict:
    return json.loads(path.read_bytes())


def write_envelope(path: Path, env: dict) -> Path:
    path.write_bytes(json.dumps(env).encode())
    return path


def payload_type(path: Path) -> str:
    return envelope(path)["payloadType"]


def is_lines(path: Path) -> bool:
    return payload_type(path) == BUNDLE_LINES_TYPE


def payload_doc(path: Path) -> dict:
    return layout.document(payload_type(path), base64.b64decode(envelope(path)["payload"]))


def verify(path: Path, *trust: Path):
    args = ["verify", str(path)]
    for t in trust:
        args += ["--trust", str(t)]
    return gwc(*args)


def refused(path: Path, pub: Path) -> str:
    """Refused by both the CLI (exit 1, one line on stderr) and the runtime loader; the reason."""
    result = verify(path, pub)
    assert result.exit_code == 1, result.stdout
    assert result.stderr.startswith(f"gwc: refused {path}: ")
    with pytest.raises(BundleError) as exc:
        load_bundle(path.read_bytes(), trusted_keys([str(pub)]))
    assert str(exc.value) in result.stderr
    return result.stderr


def test_good_bundle_verifies(bundle: Path, signing_key) -> None:
    result = verify(bundle, signing_key[1])
    assert result.exit_code == 0, result.stderr
    kid = key_id(signing_key[2].public_key())
    assert result.stdout.startswith("ok: sha256:")
    assert f"serial 7 revision r7, signed by key {kid}" in result.stdout


def test_flipped_payload_byte_is_a_bad_signature(bundle: Path, signing_key) -> None:
    env = envelope(bundle)
    raw = bytearray(base64.b64decode(env["payload"]))
    i = raw.index(b'"serial":7') + len(b'"serial":')
    raw[i] = ord("8")  # still valid JSON, still a valid bundle: only the signature can catch it
    env["payload"] = base64.b64encode(bytes(raw)).decode()
    assert parse_payload(bytes(raw), env["payloadType"]).serial == 8
    assert "bad signature" in refused(write_envelope(bundle, env), signing_key[1])


def test_flipped_signature_byte_is_refused(bundle: Path, signing_key) -> None:
    env = envelope(bundle)
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[10] ^= 0x01
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    assert "bad signature" in refused(write_envelope(bundle, env), signing_key[1])


def test_swapped_payload_type_is_refused(bundle: Path, signing_key) -> None:
    env = envelope(bundle)
    env["payloadType"] = "application/json"
    assert "unexpected payloadType 'application/json'" in refused(write_envelope(bundle, env),
                                                                  signing_key[1])


def test_untrusted_key_is_an_unknown_key(bundle: Path, tmp_path: Path) -> None:
    _, other_pub, _ = generate_keypair(tmp_path / "other")
    message = refused(bundle, other_pub)
    assert "signed by an unknown key" in message


def test_rotation_second_trusted_key_signed(example_root: Path, tmp_path: Path) -> None:
    _, old_pub, _ = generate_keypair(tmp_path / "old")
    _, new_pub, new_key = generate_keypair(tmp_path / "new")
    path = build(load_ok(example_root), new_key, tmp_path / "out", 1, "r").path
    result = verify(path, old_pub, new_pub)
    assert result.exit_code == 0, result.stderr
    assert f"signed by key {key_id(new_key.public_key())}" in result.stdout
    assert verify(path, old_pub).exit_code == 1


def test_signature_by_unknown_key_is_skipped_when_a_trusted_one_follows(bundle: Path, signing_key,
                                                                        tmp_path: Path) -> None:
    _, _, stranger = generate_keypair(tmp_path / "stranger")
    env = envelope(bundle)
    foreign = json.loads(sign_envelope(base64.b64decode(env["payload"]), stranger,
                                       env["payloadType"]))["signatures"][0]
    env["signatures"].insert(0, foreign)
    assert verify(write_envelope(bundle, env), signing_key[1]).exit_code == 0


def test_truncated_file_is_malformed(bundle: Path, signing_key) -> None:
    data = bundle.read_bytes()
    bundle.write_bytes(data[: len(data) // 2])
    assert "malformed envelope: not JSON (truncated or corrupted file?)" in refused(bundle, signing_key[1])


def test_empty_file_is_malformed(bundle: Path, signing_key) -> None:
    bundle.write_bytes(b"")
    assert "malformed envelope" in refused(bundle, signing_key[1])


@pytest.mark.parametrize("signatures", [[], None, "sig"])
def test_envelope_without_signatures_is_unsigned(bundle: Path, signing_key, signatures) -> None:
    env = envelope(bundle)
    if signatures is None:
        del env["signatures"]
    else:
        env["signatures"] = signatures
    assert "unsigned bundle" in refused(write_envelope(bundle, env), signing_key[1])


def test_payload_not_base64_is_malformed(bundle: Path, signing_key) -> None:
    env = envelope(bundle)
    env["payload"] = "***"
    assert "malformed envelope: payload is not valid base64" in refused(write_envelope(bundle, env),
                                                                        signing_key[1])


def _signed(path: Path, payload: bytes, key) -> Path:
    """``payload`` signed with ``key`` as a payload of the bundle's own type, in its place."""
    path.write_bytes(sign_envelope(payload, key, payload_type(path)))
    return path


def _encoded(path: Path, doc: dict) -> bytes:
    """``doc`` encoded as the bundle at ``path`` is."""
    return layout.encode(doc, "lines" if is_lines(path) else "json")


def test_signed_unknown_format_is_refused(bundle: Path, signing_key) -> None:
    doc = payload_doc(bundle)
    doc["format"] = "gwc.bundle/v9"
    message = refused(_signed(bundle, _encoded(bundle, doc), signing_key[2]), signing_key[1])
    assert "unknown bundle format 'gwc.bundle/v9' (this gwc reads gwc.bundle/v1)" in message


def test_signed_payload_without_servers_is_malformed(bundle: Path, signing_key) -> None:
    doc = payload_doc(bundle)
    del doc["servers"]
    if is_lines(bundle):  # the header says which server lines follow: without it, none do
        doc["rules"] = len(doc["rules"])
        payload, expected = canonical_json(doc) + b"\n", "the header's servers is not a list"
    else:
        payload, expected = canonical_json(doc), "servers: Field required"
    message = refused(_signed(bundle, payload, signing_key[2]), signing_key[1])
    assert f"malformed payload: {expected}" in message


def test_signed_payload_that_is_not_json_is_malformed(bundle: Path, signing_key) -> None:
    message = refused(_signed(bundle, b"\xff not json\n", signing_key[2]), signing_key[1])
    assert ("malformed payload: the header line is not JSON" if is_lines(bundle)
            else "malformed payload: not JSON") in message


def test_signed_payload_with_dangling_rule_index_is_malformed(bundle: Path, signing_key) -> None:
    doc = payload_doc(bundle)
    doc["servers"]["deploy"]["tools"]["deploy"]["allow"] = [999]
    message = refused(_signed(bundle, _encoded(bundle, doc), signing_key[2]), signing_key[1])
    assert "malformed payload" in message and "rule index 999 out of range" in message


def test_signed_payload_with_unknown_field_is_malformed(bundle: Path, signing_key) -> None:
    doc = payload_doc(bundle)
    doc["servers"]["deploy"]["bypass"] = True
    message = refused(_signed(bundle, _encoded(bundle, doc), signing_key[2]), signing_key[1])
    assert "malformed payload: servers.deploy.bypass: Extra inputs are not permitted" in message


def test_signed_payload_is_canonical_and_round_trips(bundle: Path, example_root: Path) -> None:
    raw = base64.b64decode(envelope(bundle)["payload"])
    # sorted keys, compact, UTF-8; one document, or one per line
    assert raw == _encoded(bundle, payload_doc(bundle))
    assert raw.count(b"\n") == (1 + 5 + 13 if is_lines(bundle) else 0)
    assert parse_payload(raw, payload_type(bundle)) == compile_registry(load_ok(example_root), 7, "r7")


def test_verify_requires_trust() -> None:
    assert gwc("verify", __file__).exit_code == 2


# --- inspect -------------------------------------------------------------------------------------------

def test_inspect_text(bundle: Path, signing_key) -> None:
    result = gwc("inspect", bundle, "--trust", signing_key[1])
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "serial   7   revision r7" in text
    assert f"signature verified (key {key_id(signing_key[2].public_key())[:16]})" in text
    assert "5 servers, 15 tools (9 read, 6 write, 4 with approval), 13 rules (2 deny)" in text
    sre = next(line for line in text.splitlines() if line.startswith("  group:sre:"))
    assert "postgres-prod: list_schemas, query, run_migration" in sre
    analytics = next(line for line in text.splitlines() if line.startswith("  group:analytics:"))
    assert "postgres-prod: list_schemas, query*" in analytics  # query is conditional: schemas
    platform = next(line for line in text.splitlines() if line.startswith("  group:data-platform:"))
    assert "postgres-prod: list_schemas, query*" in platform  # the grant pins brought to light
    assert "update_ticket (write, shadow)" in text


def test_inspect_without_trust_says_unchecked(bundle: Path) -> None:
    result = gwc("inspect", bundle)
    assert result.exit_code == 0
    assert "signature NOT checked" in result.stdout


def test_inspect_with_trust_refuses_a_tampered_bundle(bundle: Path, signing_key) -> None:
    env = envelope(bundle)
    env["signatures"][0]["sig"] = base64.b64encode(b"\0" * 64).decode()
    write_envelope(bundle, env)
    result = gwc("inspect", bundle, "--trust", signing_key[1])
    assert result.exit_code == 1 and "bad signature" in result.stderr


def test_inspect_json(bundle: Path, signing_key) -> None:
    result = gwc("inspect", bundle, "--trust", signing_key[1], "--format", "json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["serial"] == 7 and doc["revision"] == "r7"
    assert doc["signature"] == {"verified": True, "keyid": key_id(signing_key[2].public_key())}
    assert doc["counts"] == {"servers": 5, "tools": 15, "read": 9, "write": 6, "approval": 4,
                             "rules": 13, "deny_rules": 2}
    assert sorted(doc["servers"]) == ["data-catalog", "deploy", "incidents", "postgres-prod", "zendesk"]
    assert doc["servers"]["postgres-prod"]["tools"]["run_migration"] == {
        "access": "write", "approval": True, "mode": "enforce"}
    access = doc["access"]
    assert access["group:sre"]["postgres-prod/run_migration"] == "allow"
    assert access["group:analytics"]["postgres-prod/query"] == "conditional"
    assert "postgres-prod/run_migration" not in access["group:analytics"]
    assert access["group:engineering"]["deploy/deploy"] == "conditional"
    assert "incidents/create_incident" not in access["agent:triage-bot"]
    assert "incidents/create_incident" not in access["group:contractors"]
    assert access["everyone"]["incidents/create_incident"] == "allow"


# --- the runtime stays lean ----------------------------------------------------------------------------

def test_runtime_never_imports_the_compiler_or_its_tooling() -> None:
    code = ("import sys, gwc.runtime.bundle.read, gwc.runtime.policy.decide, gwc.runtime.bundle.envelope, "
            "gwc.runtime.bundle.canonical, gwc.runtime.bundle.format\n"
            "bad = sorted(m for m in sys.modules if m.startswith('gwc.compiler') or m.split('.')[0] in "
            "('click', 'jinja2', 'jsonschema'))\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_runtime_import_check_can_fail() -> None:
    """The isolation check above really detects a compiler import (guards against a vacuous test)."""
    code = ("import sys, gwc.runtime.bundle.read, gwc.compiler.build.diff\n"
            "assert not any(m.startswith('gwc.compiler') for m in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0
