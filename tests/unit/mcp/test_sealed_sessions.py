"""Sealed legacy MCP session ids (runtime/mcp/sealed_sessions.py): sealing, opening, rotation,
expiry, binding."""
from __future__ import annotations

import base64
import dataclasses
import os
import time

import pytest

from gwc.runtime.mcp import sealed_sessions
from gwc.runtime.mcp.sealed_sessions import PREFIX, Session, SessionKeyError, SessionSealer, parse_key
from gwc.runtime.policy.decide import Principal

OLD, NEW, OTHER = (os.urandom(32) for _ in range(3))
AGENT = Principal("bot-1", frozenset({"g"}), "agent", "alice")


def session(**changes: object) -> Session:
    base = Session(subject="bot-1", kind="agent", acting_for="alice", endpoint="search",
                   protocol_version="2025-06-18", capabilities={"roots": {"listChanged": True}},
                   client_info={"name": "client", "version": "1.0 ✓"}, created=int(time.time()))
    return dataclasses.replace(base, **changes)


def raw(token: str) -> bytes:
    body = token.removeprefix(PREFIX)
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def token_of(sealed: bytes) -> str:
    return PREFIX + base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()


# --- sealing and opening --------------------------------------------------------------------------

def test_round_trip_keeps_every_field() -> None:
    sealer = SessionSealer([OLD])
    original = session(acting_for=None, kind="human", endpoint="")
    token = sealer.seal(original)
    assert token.startswith(PREFIX)
    assert sealer.open(token) == original


def test_a_session_too_large_for_a_header_is_refused_when_sealed() -> None:
    sealer = SessionSealer([OLD])
    huge = session(capabilities={"experimental": {"blob": "x" * sealed_sessions.MAX_SEALED_CHARS}})
    with pytest.raises(sealed_sessions.SessionTooLarge):
        sealer.seal(huge)


def test_the_id_reveals_nothing_in_clear() -> None:
    token = SessionSealer([OLD]).seal(session())
    assert b"bot-1" not in raw(token) and b"alice" not in raw(token)


def test_two_seals_of_the_same_session_differ() -> None:
    sealer = SessionSealer([OLD])
    first, second = sealer.seal(session()), sealer.seal(session())
    assert first != second
    assert raw(first)[:sealed_sessions.NONCE_BYTES] != raw(second)[:sealed_sessions.NONCE_BYTES]
    assert sealer.open(first) == sealer.open(second) == session()


def test_tampering_with_any_byte_is_refused() -> None:
    sealer = SessionSealer([OLD])
    sealed = raw(sealer.seal(session()))
    for i in range(len(sealed)):
        for flip in (0x01, 0x80):
            damaged = sealed[:i] + bytes([sealed[i] ^ flip]) + sealed[i + 1:]
            assert sealer.open(token_of(damaged)) is None, (i, flip)


def test_truncated_or_extended_ids_are_refused() -> None:
    sealer = SessionSealer([OLD])
    sealed = raw(sealer.seal(session()))
    for cut in (1, 16, len(sealed) - sealed_sessions.NONCE_BYTES):
        assert sealer.open(token_of(sealed[:-cut])) is None
    assert sealer.open(token_of(sealed + b"\0")) is None
    assert sealer.open(token_of(sealed[:sealed_sessions.NONCE_BYTES])) is None


def test_a_foreign_key_cannot_open() -> None:
    token = SessionSealer([OTHER]).seal(session())
    assert SessionSealer([OLD]).open(token) is None
    assert SessionSealer([OLD, NEW]).open(token) is None


@pytest.mark.parametrize("token", [
    "", "s1.", "s1.a", "s1.ab", "s1.abc", "s1." + "A" * 16, "s1." + "A" * 200, "s1.!!!!",
    "s1.é", "s1.\x00\x00", "s2.AAAA", "S1.AAAA", "abc", "s1.====", "s1.a=b=", " s1.AAAA",
    "s1." + "A" * 9000, "x" * 100_000,
])
def test_garbage_is_refused_without_an_exception(token: str) -> None:
    assert SessionSealer([OLD]).open(token) is None


def test_an_oversized_id_is_refused_even_when_genuine(monkeypatch) -> None:
    sealer = SessionSealer([OLD])
    with monkeypatch.context() as patch:  # a node with a laxer limit sealed it
        patch.setattr(sealed_sessions, "MAX_SEALED_CHARS", 100_000)
        token = sealer.seal(session(client_info={"name": "x" * 8000}))
    assert len(token) > sealed_sessions.MAX_SEALED_CHARS
    assert sealer.open(token) is None


def test_a_genuine_id_under_another_prefix_is_refused() -> None:
    sealer = SessionSealer([OLD])
    token = sealer.seal(session())
    assert sealer.open("s2." + token.removeprefix(PREFIX)) is None
    assert sealer.open(token.removeprefix(PREFIX)) is None


def test_an_id_opened_again_is_not_decrypted_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A legacy client sends its id with every request: once authenticated, it is kept opened
    (only ids that opened, so nothing forged is ever found there)."""
    sealer = SessionSealer([OLD])
    token = sealer.seal(session())
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    opened: list[str] = []
    real_open = sealer._open
    monkeypatch.setattr(sealer, "_open", lambda t, *a: opened.append(t) or real_open(t, *a))
    assert sealer.open(token) == sealer.open(token) == session()
    assert sealer.open(forged) is None and sealer.open(forged) is None
    assert opened == [token, forged, forged]


# --- key rotation ---------------------------------------------------------------------------------

def test_the_first_key_seals_and_every_key_opens() -> None:
    old_token = SessionSealer([OLD]).seal(session())
    rotated = SessionSealer([NEW, OLD])
    assert rotated.open(old_token) == session()
    new_token = rotated.seal(session())
    assert SessionSealer([NEW]).open(new_token) == session()
    assert SessionSealer([OLD]).open(new_token) is None


def test_a_retired_key_no_longer_opens() -> None:
    old_token = SessionSealer([OLD]).seal(session())
    assert SessionSealer([NEW]).open(old_token) is None


def test_without_keys_a_node_makes_its_own() -> None:
    first, second = SessionSealer([]), SessionSealer([])
    token = first.seal(session())
    assert first.open(token) == session()
    assert second.open(token) is None


# --- expiry ---------------------------------------------------------------------------------------

def test_an_id_older_than_max_age_is_refused() -> None:
    sealer = SessionSealer([OLD], max_age_s=3600)
    now = int(time.time())
    assert sealer.open(sealer.seal(session(created=now - 3500))) is not None
    assert sealer.open(sealer.seal(session(created=now - 3700))) is None


def test_an_id_expires_as_time_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    sealer = SessionSealer([OLD], max_age_s=60)
    created = 1_700_000_000
    token = sealer.seal(session(created=created))
    monkeypatch.setattr(sealed_sessions.time, "time", lambda: created + 59.0)
    assert sealer.open(token) is not None
    monkeypatch.setattr(sealed_sessions.time, "time", lambda: created + 61.0)
    assert sealer.open(token) is None


def test_the_default_max_age_is_a_week() -> None:
    sealer = SessionSealer([OLD])
    now = int(time.time())
    assert sealer.open(sealer.seal(session(created=now - 6 * 24 * 3600))) is not None
    assert sealer.open(sealer.seal(session(created=now - 8 * 24 * 3600))) is None


# --- keys -----------------------------------------------------------------------------------------

def test_parse_key_accepts_padded_and_unpadded_url_safe_base64() -> None:
    key = bytes(range(250, 256)) + os.urandom(26)  # 0xfb.. encode to '-' and '_'
    padded = base64.urlsafe_b64encode(key).decode()
    assert padded.endswith("=") and ("-" in padded or "_" in padded)
    assert parse_key(padded) == key
    assert parse_key(padded.rstrip("=")) == key
    assert parse_key(f"  {padded.rstrip('=')}\n") == key


@pytest.mark.parametrize("text", [
    base64.urlsafe_b64encode(bytes(31)).decode(),
    base64.urlsafe_b64encode(bytes(33)).decode(),
    base64.urlsafe_b64encode(bytes(16)).decode(),
    "",
])
def test_parse_key_refuses_other_lengths(text: str) -> None:
    with pytest.raises(SessionKeyError, match="32 bytes"):
        parse_key(text)


@pytest.mark.parametrize("text", ["a", "é" * 43, "A" * 41 + "é"])
def test_parse_key_refuses_text_that_is_not_base64(text: str) -> None:
    with pytest.raises(SessionKeyError):
        parse_key(text)


def test_a_parsed_key_seals() -> None:
    text = base64.urlsafe_b64encode(OLD).decode().rstrip("=")
    token = SessionSealer([parse_key(text)]).seal(session())
    assert SessionSealer([OLD]).open(token) == session()


# --- binding --------------------------------------------------------------------------------------

def test_a_session_belongs_to_its_principal_on_its_endpoint() -> None:
    assert session().belongs_to(AGENT, "search")
    # groups are not part of the binding: they may change between requests
    assert session().belongs_to(dataclasses.replace(AGENT, groups=frozenset()), "search")


@pytest.mark.parametrize("principal, endpoint", [
    (dataclasses.replace(AGENT, subject="bot-2"), "search"),
    (dataclasses.replace(AGENT, kind="human"), "search"),
    (dataclasses.replace(AGENT, acting_for="bob"), "search"),
    (dataclasses.replace(AGENT, acting_for=None), "search"),
    (AGENT, "other"),
    (AGENT, ""),
])
def test_a_session_does_not_belong_to_anyone_else(principal: Principal, endpoint: str) -> None:
    assert not session().belongs_to(principal, endpoint)


def test_an_aggregate_session_does_not_belong_to_a_server_endpoint() -> None:
    assert session(endpoint="").belongs_to(AGENT, "")
    assert not session(endpoint="").belongs_to(AGENT, "search")
