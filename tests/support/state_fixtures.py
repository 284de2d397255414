"""What the approval, bypass and governance API tests share: an injectable clock, principals, and
each state backend (memory, or Redis on the real redis-server fixture)."""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from gwc.runtime.governance.backend import connect
from gwc.runtime.policy.decide import Principal

T0 = 1_800_000_000.0

ALICE = Principal("alice", frozenset({"eng"}))  # requests
BOB = Principal("bob", frozenset({"ops"}))  # approves (group ops)
CAROL = Principal("carol", frozenset({"eng"}))  # neither
BOT = Principal("bot", frozenset({"eng", "ops"}), "agent", "alice")  # an agent acting for alice
SRE = Principal("sam", frozenset({"sre-oncall"}))  # break-glass member


class AuditList:
    """An audit trail for the governance API's tests: records kept in a list, and a switch that
    makes writing fail (``audit_fails``: the exception to raise)."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.audit_fails: Exception | None = None

    async def audit(self, record: dict) -> None:
        if self.audit_fails is not None:
            raise self.audit_fails
        self.records.append(record)

    def base_record(self, request, bundle, principal, type_) -> dict:
        return {"type": type_, "bundle": {"digest": bundle.digest, "serial": bundle.serial},
                "principal": {"subject": principal.subject, "kind": principal.kind}}


class Clock:
    """Epoch seconds that move only when told."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# Registered under their short names; test modules import the *_fixture functions.
@pytest.fixture(name="clock")
def clock_fixture() -> Clock:
    return Clock()


@pytest.fixture(name="redis_clients")
async def redis_clients_fixture(redis_server) -> AsyncIterator[Callable]:
    """``make()`` -> a new Redis client (one per simulated node) on the test's redis-server."""
    clients = []

    def make():
        clients.append(connect(redis_server.url))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()
