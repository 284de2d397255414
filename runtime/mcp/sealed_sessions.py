"""Sealed gateway session ids: any node can serve any request of a legacy (2025-era) MCP session.

A legacy client gets an ``Mcp-Session-Id`` at ``initialize`` and sends it on every later request.
Instead of a session table (sticky load balancing, or a shared store), the id *is* the session:
what the gateway needs, encrypted and authenticated with AES-256-GCM under a key the fleet shares.
Keys rotate: the first key seals, every key opens. A sealed session is bound to the subject that
opened it and to the endpoint it was opened on; anything else presenting it is refused.
"""
from __future__ import annotations

import base64
import binascii
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gwc.runtime.policy.decide import Principal

log = logging.getLogger("gwc.sessions")
PREFIX = "s1."  # format version of the sealed id, visible so a future format can coexist
AAD = b"gwc-session/v1"
NONCE_BYTES = 12
KEY_BYTES = 32
DEFAULT_MAX_AGE_S = 7 * 24 * 3600


MAX_SEALED_CHARS = 8192  # what open() accepts; seal() never makes more


class SessionTooLarge(ValueError):
    """The client declared so much that its session would not fit in a header."""


class SessionKeyError(ValueError):
    """A configured session key is not 32 bytes of URL-safe base64."""


@dataclass(frozen=True, slots=True)
class Session:
    """What a legacy session carries between requests (and nodes)."""

    subject: str
    kind: str
    acting_for: str | None
    endpoint: str  # "" for the aggregate /mcp, else the server name
    protocol_version: str
    capabilities: dict[str, Any]
    client_info: dict[str, Any]
    created: int

    def belongs_to(self, principal: Principal, endpoint: str) -> bool:
        return (self.subject == principal.subject and self.kind == principal.kind
                and self.acting_for == principal.acting_for and self.endpoint == endpoint)


def parse_key(text: str) -> bytes:
    """One key as printed by ``gwc session-key``: URL-safe base64 of 32 random bytes."""
    text = text.strip()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SessionKeyError("a session key must be URL-safe base64") from None
    if len(raw) != KEY_BYTES:
        raise SessionKeyError(f"a session key must decode to {KEY_BYTES} bytes, not {len(raw)}")
    return raw


class SessionSealer:
    def __init__(self, keys: list[bytes], max_age_s: int = DEFAULT_MAX_AGE_S) -> None:
        if not keys:
            keys = [AESGCM.generate_key(bit_length=256)]
            log.warning("no --session-keys given: this node made its own session key, so legacy "
                        "sessions it opens work only on this node and end when it restarts")
        self._sealer = AESGCM(keys[0])
        self._openers = [AESGCM(k) for k in keys]
        self.max_age_s = max_age_s

    def seal(self, session: Session) -> str:
        plain = orjson.dumps([session.subject, session.kind, session.acting_for, session.endpoint,
                              session.protocol_version, session.capabilities,
                              session.client_info, session.created])
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._sealer.encrypt(nonce, plain, AAD)
        token = PREFIX + base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()
        if len(token) > MAX_SEALED_CHARS:
            raise SessionTooLarge(f"the client's capabilities are too large to carry in a session "
                                  f"id ({len(token)} > {MAX_SEALED_CHARS} characters)")
        return token

    def open(self, token: str) -> Session | None:
        """The session inside a sealed id, or None when it is forged, damaged, foreign or expired."""
        if not token.startswith(PREFIX) or len(token) > MAX_SEALED_CHARS:
            return None
        body = token[len(PREFIX):]
        try:
            sealed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            return None
        nonce, ciphertext = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
        for opener in self._openers:
            try:
                plain = opener.decrypt(nonce, ciphertext, AAD)
                break
            except (InvalidTag, ValueError):
                continue
        else:
            return None
        session = Session(*orjson.loads(plain))
        if time.time() - session.created > self.max_age_s:
            return None
        return session
