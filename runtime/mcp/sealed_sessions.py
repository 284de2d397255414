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
from cachetools import LRUCache
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gwc.runtime.policy.decide import Principal

log = logging.getLogger("gwc.sessions")
PREFIX = "s1."  # format version of the sealed id, visible so a future format can coexist
AAD = b"gwc-session/v1"
REQUEST_PREFIX = "r1."  # a sealed id of an upstream's request to a client
REQUEST_AAD = b"gwc-upstream-request/v1"
NONCE_BYTES = 12
KEY_BYTES = 32
DEFAULT_MAX_AGE_S = 7 * 24 * 3600


MAX_SEALED_CHARS = 8192  # what open() accepts; seal() never makes more
# Ids opened lately, kept opened: a legacy client sends its id with every request, and opening one
# (base64, AES-GCM, JSON, the Session) costs more than the rest of a call's session work.
OPENED_IDS = 1024


class SessionTooLarge(ValueError):
    """The client declared so much that its session would not fit in a header."""


class SessionKeyError(ValueError):
    """A configured session key is not 32 bytes of URL-safe base64."""


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """An upstream's request to a client, as the id the client sees carries it: which server and
    upstream session asked, under which id, and for whom. Sealed like a session, so the client's
    answer reaches that upstream session through any node of the fleet, and nobody can forge one
    into another's session."""

    server: str
    session_id: str | None  # the upstream's Mcp-Session-Id (None: it runs without sessions)
    protocol_version: str
    request_id: Any  # the upstream's own id of the request
    subject: str  # who it asked


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
    # random, so two sessions a caller opens in the same second are two (each has its own
    # upstream sessions); "" in ids sealed before it existed
    nonce: str = ""

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
        # only ids that opened, by their exact text: a hit is an id this node authenticated
        self._opened: LRUCache[str, Session] = LRUCache(OPENED_IDS)

    def _seal(self, values: list[Any], prefix: str, aad: bytes) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._sealer.encrypt(nonce, orjson.dumps(values), aad)
        return prefix + base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()

    def _open(self, token: str, prefix: str, aad: bytes) -> list[Any] | None:
        if not token.startswith(prefix) or len(token) > MAX_SEALED_CHARS:
            return None
        body = token[len(prefix):]
        try:
            sealed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            return None
        nonce, ciphertext = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
        for opener in self._openers:
            try:
                values = orjson.loads(opener.decrypt(nonce, ciphertext, aad))
                return values if isinstance(values, list) else None
            except (InvalidTag, ValueError):
                continue
        return None

    def seal(self, session: Session) -> str:
        token = self._seal([session.subject, session.kind, session.acting_for, session.endpoint,
                            session.protocol_version, session.capabilities, session.client_info,
                            session.created, session.nonce], PREFIX, AAD)
        if len(token) > MAX_SEALED_CHARS:
            raise SessionTooLarge(f"the client's capabilities are too large to carry in a session "
                                  f"id ({len(token)} > {MAX_SEALED_CHARS} characters)")
        return token

    def open(self, token: str) -> Session | None:
        """The session inside a sealed id, or None when it is forged, damaged, foreign or expired."""
        session = self._opened.get(token)
        if session is None:
            values = self._open(token, PREFIX, AAD)
            if values is None:
                return None
            try:
                session = Session(*values)
            except TypeError:  # a format this node does not know
                return None
            self._opened[token] = session
        if time.time() - session.created > self.max_age_s:
            return None
        return session

    def seal_request(self, asked: UpstreamRequest) -> str:
        """The id a client sees for an upstream's request to it (elicitation, sampling, roots)."""
        return self._seal([asked.server, asked.session_id, asked.protocol_version,
                           asked.request_id, asked.subject], REQUEST_PREFIX, REQUEST_AAD)

    def open_request(self, token: Any) -> UpstreamRequest | None:
        """The upstream request a client's answer is for, or None (not one the gateway sealed)."""
        values = self._open(token, REQUEST_PREFIX, REQUEST_AAD) if isinstance(token, str) else None
        try:
            return UpstreamRequest(*values) if values is not None else None
        except TypeError:
            return None
