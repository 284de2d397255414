"""Approvals (DESIGN.md access rule 4, Governance): a granted call to a tool marked
``approval: required`` waits until an approver says yes, then goes through once.

Life of an approval (``apv_<random>``, unguessable; ``status`` in ``pending|approved|denied|used``):

- The call is refused as ``approval_required`` and a *pending* approval is created for exactly that
  call: the requester's identity (subject, kind, acting_for), server, tool and the digest of its
  arguments (:func:`arguments_digest`, sha256 over canonical JSON). A retry while it is still pending
  reuses it (same id), so retries do not pile up approvals.
- What approvers are shown of the call is kept with it (:func:`shown_arguments`): the arguments'
  canonical JSON with the values of the tool's ``sensitive`` top-level arguments replaced by
  ``"***"`` before anything is stored (no backend ever holds them), or nothing when that is over
  :data:`MAX_SHOWN_ARGUMENTS` bytes (the approver then has only the digest). The digest is always of
  the real arguments: it is what a retry must match.
- An approver decides it (:meth:`Approvals.decide`). Who may: the tool's ``approval.approvers``
  audience, copied into the approval when it is created (a policy change later does not silently
  change who may approve a request already waiting; the approval records who could). Humans match
  ``everyone``, ``group:``/``team:`` and ``user:`` entries; an agent matches only an ``agent:<id>``
  entry naming it (its token carries its human's groups, and approval is the human check). Never
  the requester: not its subject, not the human an agent requested for, and not an agent acting for
  either of them.
- The requester's retry of the same call (same identity, server, tool and digest) before the
  expiry is *redeemed*: atomically marked ``used``, so it goes through once, even when two nodes
  race (one wins). A denied approval makes the retry refused ("denied by X") until it expires.
- One TTL (``ttl_s``, 900 s by default) from creation covers both the wait and the retry.

Flooding: a requester may have at most ``max_pending`` approvals waiting for a decision
(:data:`MAX_PENDING`, 20); a call that would create one more is refused with
:class:`TooManyApprovals` (``too_many_approvals``, HTTP 429, ``retry_after_s`` until its oldest
waiting approval expires). Retries of a waiting call, redeeming an approved one and approvals
decided since do not count. No approval is ever evicted to make room for another: a bound only
ever refuses new ones.

Decisions are never un-audited: :meth:`Approvals.decide` first *claims* the pending approval (a 10 s
lease, so two approvers cannot both decide it), then awaits the caller's ``audit`` hook with the
decision, and only then commits it. If the audit write fails the claim is released and the approval
stays pending. If the node dies (or the backend fails) between audit and commit, the trail holds a
decision that did not take effect; the approval stays pending and the lease lapses.

Backends (one interface):

- ``MemoryApprovals``: one node. Bounded (``max_entries``, 10,000 by default); expired approvals
  are dropped as new ones come, and while the live ones fill the bound, new ones are refused
  (:class:`TooManyApprovals`): nobody's approval, pending or granted, is dropped for a newcomer.
- ``RedisApprovals`` (module ``approvals_redis``): a fleet; any node can serve any step. One hash per
  approval (``{gwc:ap}:a:<id>``), an index from the call to its open approval
  (``{gwc:ap}:r:<sha256>``), a sorted set of ids by expiry for listing (``{gwc:ap}:list``), and per
  requester a sorted set of its approvals that may still be pending (``{gwc:ap}:q:<sha256>``, pruned
  as they are counted); the keys expire with the approval (``PX``). Lookup/redeem/create is one Lua
  script, claim and commit one each: atomic. Redis unreachable: approvals fail CLOSED, every
  operation raises :class:`StateUnavailable` (answer ``state_unavailable``, 503); nothing is
  approved or redeemed from a node's memory.

(Longer than ~400 lines for its first 50: this docstring is the reference for approvals' life; the
Redis backend is in ``approvals_redis``.)

Times are epoch seconds from the node's clock (``clock``, injectable); nodes are expected to be
NTP-synced, which is ample for a TTL of minutes.
"""
from __future__ import annotations

import contextlib
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from hashlib import sha256
from typing import Any, Literal

from gwc.runtime.bundle.canonical import canonical_json
from gwc.runtime.bundle.format import Audience
from gwc.runtime.governance.backend import Refusal, StateUnavailable
from gwc.runtime.policy.decide import Principal
from gwc.runtime.protocol.errors import TOO_MANY_APPROVALS, RpcError

__all__ = ["MASK", "MAX_SHOWN_ARGUMENTS", "Approval", "ApprovalError", "Approvals", "Lookup",
           "MemoryApprovals", "Requester", "StateUnavailable", "TooManyApprovals", "approval_page_path",
           "approval_path", "arguments_digest", "is_own", "may_approve", "shown_arguments",
           "visible_to"]

Status = Literal["pending", "approved", "denied", "used"]
DEFAULT_TTL_S = 900.0
DEFAULT_MAX_ENTRIES = 10_000
MAX_PENDING = 20  # approvals one requester may have waiting for a decision at once
CLAIM_LEASE_S = 10.0  # how long one approver's decision in progress holds off the others
LIST_MAX = 1000  # at most this many approvals are read for one listing
ID_PREFIX = "apv_"
ID_RE = re.compile(r"apv_[A-Za-z0-9_-]{16,64}")
MAX_SHOWN_ARGUMENTS = 16 * 1024  # bytes of canonical JSON an approval keeps to show its approvers
MASK = "***"  # what a sensitive argument's value is replaced by


def arguments_digest(arguments: Any) -> str:
    """``sha256:<hex>`` of the canonical JSON of a call's arguments (absent arguments = ``{}``)."""
    return "sha256:" + sha256(canonical_json({} if arguments is None else arguments)).hexdigest()


def shown_arguments(arguments: Any, sensitive: Sequence[str] = ()) -> str | None:
    """What an approval keeps of a call's arguments for its approvers: their canonical JSON, the
    values of the ``sensitive`` top-level arguments replaced by :data:`MASK`; None when that is
    over :data:`MAX_SHOWN_ARGUMENTS` bytes."""
    value = {} if arguments is None else arguments
    if sensitive and isinstance(value, dict):
        value = {name: MASK if name in sensitive else item for name, item in value.items()}
    text = canonical_json(value)
    return text.decode() if len(text) <= MAX_SHOWN_ARGUMENTS else None


def approval_path(approval_id: str) -> str:
    """Where an approval is read and decided over the API (``/approve``, ``/deny`` below it)."""
    return f"/v1/approvals/{approval_id}"


def approval_page_path(approval_id: str) -> str:
    """The approval's page, where an approver signed in with a browser reads and decides it."""
    return f"/approvals/{approval_id}"


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asked: the identity a retry must present again (groups are not part of it)."""

    subject: str
    kind: str
    acting_for: str | None = None

    @classmethod
    def of(cls, principal: Principal) -> Requester:
        return cls(principal.subject, principal.kind, principal.acting_for)

    def as_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "kind": self.kind, "acting_for": self.acting_for}


@dataclass(frozen=True, slots=True)
class Approval:
    id: str
    requester: Requester
    server: str
    tool: str
    arguments_digest: str
    approvers: tuple[str, ...]
    status: Status
    created: float
    expires: float
    decided_by: str | None = None
    decided_at: float | None = None
    used_at: float | None = None
    # the canonical JSON of the call's arguments, sensitive ones masked (:func:`shown_arguments`);
    # None when they were too large to keep
    arguments: str | None = None


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the gateway found for a call: ``redeemed`` (go ahead, now used), ``pending`` (with
    ``created`` when this lookup made it), ``approved`` (by :meth:`Approvals.request`, which never
    redeems), ``denied``, or ``none`` (by :meth:`Approvals.redeem`, which never creates)."""

    status: Literal["redeemed", "pending", "approved", "denied", "none"]
    approval: Approval | None = None
    created: bool = False


class ApprovalError(Refusal):
    """A refused decision: 404 not_found, 403 not_an_approver/own_request, 409 conflicts."""


class TooManyApprovals(RpcError):
    """A new approval refused (``too_many_approvals``, HTTP 429): its requester has ``max_pending``
    waiting, or a node's memory is full of live approvals. A JSON-RPC error, so the request path
    answers it as it is; ``retry_after_s`` is when the approval that frees a place expires."""

    def __init__(self, message: str, retry_after_s: float, **data: Any) -> None:
        retry = round(max(0.0, retry_after_s), 3)
        super().__init__(TOO_MANY_APPROVALS, message, 429, retry_after_s=retry,
                         headers={"Retry-After": str(max(1, math.ceil(retry)))}, **data)


def _identities(subject: str, acting_for: str | None) -> set[str]:
    return {subject} if acting_for is None else {subject, acting_for}


def is_own(approval: Approval, principal: Principal) -> bool:
    """The principal is (or is an agent acting for) the requester or the human it requested for."""
    req = approval.requester
    return not _identities(req.subject, req.acting_for).isdisjoint(
        _identities(principal.subject, principal.acting_for))


def _admitted(approval: Approval, principal: Principal) -> bool:
    entries = approval.approvers
    if principal.kind == "agent":
        return f"agent:{principal.subject}" in entries
    if principal.kind != "human":
        return False
    return ("everyone" in entries or f"user:{principal.subject}" in entries
            or any(f"group:{g}" in entries for g in principal.groups))


def may_approve(approval: Approval, principal: Principal) -> bool:
    """Whether the principal may decide this approval (whatever its status)."""
    return _admitted(approval, principal) and not is_own(approval, principal)


def visible_to(approval: Approval, principal: Principal) -> bool:
    """Requesters see their own approvals, approvers the ones they may decide; nobody else."""
    return is_own(approval, principal) or _admitted(approval, principal)


def _request_key(requester: Requester, server: str, tool: str, digest: str) -> str:
    return sha256(canonical_json([requester.subject, requester.kind, requester.acting_for, server,
                                  tool, digest])).hexdigest()


def _conflict(code: str, approval: Approval | None, approval_id: str) -> None:
    """Raise the error a claim/commit answer means (``ok`` passes)."""
    if code == "ok":
        return
    if code == "not_found" or approval is None:
        raise ApprovalError(404, "not_found", f"no approval {approval_id} (or it expired)")
    if code == "decided":
        by = f" by {approval.decided_by}" if approval.decided_by else ""
        raise ApprovalError(409, "already_decided", f"approval {approval_id} is already "
                            f"{approval.status}{by}")
    if code == "expired":
        raise ApprovalError(409, "expired", f"approval {approval_id} has expired")
    raise ApprovalError(409, "being_decided", f"another approver is deciding {approval_id} right now")


AuditHook = Callable[[Approval], Awaitable[None]]


class Approvals:
    """The interface of every backend; the rules (who may decide, audit before commit) live here,
    the backends supply atomic primitives."""

    def __init__(self, ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.time,
                 max_pending: int = MAX_PENDING) -> None:
        if ttl_s <= 0 or max_pending < 1:
            raise ValueError("ttl_s and max_pending must be positive")
        self.ttl_s, self._clock, self.max_pending = float(ttl_s), clock, max_pending

    def _new(self, principal: Principal, server: str, tool: str, digest: str,
             approvers: Audience | Sequence[str], now: float, shown: str | None) -> Approval:
        entries = approvers.entries() if isinstance(approvers, Audience) else tuple(approvers)
        return Approval(ID_PREFIX + secrets.token_urlsafe(18), Requester.of(principal), server, tool,
                        digest, entries, "pending", now, now + self.ttl_s, arguments=shown)

    async def _find(self, principal: Principal, server: str, tool: str, digest: str, consume: bool,
                    approvers: Audience | Sequence[str] | None, arguments: Any = None,
                    sensitive: Sequence[str] = ()) -> Lookup:
        now = self._clock()
        new = None
        if approvers is not None:
            shown = None if arguments is None else shown_arguments(arguments, sensitive)
            new = self._new(principal, server, tool, digest, approvers, now, shown)
        key = _request_key(Requester.of(principal), server, tool, digest)
        code, approval = await self._lookup(key, now, consume, new)
        if code == "created":
            return Lookup("pending", approval, created=True)
        if code == "too_many":
            assert approval is not None
            raise TooManyApprovals(
                f"{self.max_pending} of your approvals are already waiting for a decision, the most "
                f"a caller may have: have them decided, or retry when the oldest ({approval.id}) "
                "expires", approval.expires - now, approval_id=approval.id)
        if code == "full":
            assert approval is not None  # someone else's: only its expiry is told
            raise TooManyApprovals("this gateway node holds as many waiting approvals as it can; "
                                   "retry later", approval.expires - now)
        return Lookup(code, approval)  # type: ignore[arg-type]

    async def redeem_or_request(self, principal: Principal, server: str, tool: str, digest: str,
                                approvers: Audience | Sequence[str], *, arguments: Any = None,
                                sensitive: Sequence[str] = ()) -> Lookup:
        """The gateway's one call for an approval-required call: ``redeemed``, ``denied``, or
        ``pending`` (the waiting one, or a new one with ``created``). One round trip. A new one
        keeps ``arguments`` (those ``digest`` is of) with the ``sensitive`` ones masked."""
        return await self._find(principal, server, tool, digest, True, approvers, arguments,
                                sensitive)

    async def redeem(self, principal: Principal, server: str, tool: str, digest: str) -> Lookup:
        """Consume an approved approval for this call; else say what there is (never creates)."""
        return await self._find(principal, server, tool, digest, True, None)

    async def request(self, principal: Principal, server: str, tool: str, digest: str,
                      approvers: Audience | Sequence[str], *, arguments: Any = None,
                      sensitive: Sequence[str] = ()) -> Lookup:
        """The open approval for this call (pending, approved or denied), or a new pending one.
        Never redeems."""
        return await self._find(principal, server, tool, digest, False, approvers, arguments,
                                sensitive)

    async def get(self, approval_id: str) -> Approval | None:
        """The approval, or None when unknown or expired."""
        if not ID_RE.fullmatch(approval_id):
            return None
        approval = await self._get(approval_id)
        return approval if approval is not None and approval.expires > self._clock() else None

    async def decide(self, approval_id: str, approver: Principal, approve: bool, *,
                     audit: AuditHook | None = None) -> Approval:
        """Approve or deny. ``audit`` gets the decided approval before the decision is committed;
        if it raises, nothing changes (see the module docstring)."""
        approval = await self.get(approval_id)
        if approval is None:
            raise ApprovalError(404, "not_found", f"no approval {approval_id} (or it expired)")
        if is_own(approval, approver):
            raise ApprovalError(403, "own_request", "a request cannot be approved or denied by its "
                                "requester (or the human it acts for)")
        if not _admitted(approval, approver):
            raise ApprovalError(403, "not_an_approver", f"{approver.subject} is not an approver of "
                                f"{approval.server}/{approval.tool}")
        if approval.status != "pending":
            _conflict("decided", approval, approval_id)
        now, token = self._clock(), secrets.token_hex(8)
        code, claimed = await self._claim(approval_id, token, now, now + CLAIM_LEASE_S)
        _conflict(code, claimed, approval_id)
        assert claimed is not None
        decided = replace(claimed, status="approved" if approve else "denied",
                          decided_by=approver.subject, decided_at=now)
        if audit is not None:
            try:
                await audit(decided)
            except BaseException:
                with contextlib.suppress(StateUnavailable):  # else the lease lapses on its own
                    await self._settle(approval_id, token, None, "", now)
                raise
        code, settled = await self._settle(approval_id, token, decided.status, approver.subject, now)
        _conflict(code, settled, approval_id)
        assert settled is not None
        return settled

    async def list_for(self, principal: Principal) -> list[Approval]:
        """Pending approvals the principal may decide, and its own requests (any status)."""
        return sorted((a for a in await self._live(self._clock())
                       if is_own(a, principal) or (a.status == "pending" and may_approve(a, principal))),
                      key=lambda a: (a.created, a.id))

    # Backend primitives, each atomic.
    async def _lookup(self, key: str, now: float, consume: bool,
                      new: Approval | None) -> tuple[str, Approval | None]:
        """The open approval of request ``key``: redeem it when approved and ``consume``; else
        store ``new`` when given. Codes: redeemed, pending, approved, denied, created, none;
        too_many (with the requester's oldest pending approval) when its requester has
        ``max_pending`` waiting, full (with the approval that expires first) when the store is."""
        raise NotImplementedError

    async def _get(self, approval_id: str) -> Approval | None:
        raise NotImplementedError

    async def _claim(self, approval_id: str, token: str, now: float,
                     until: float) -> tuple[str, Approval | None]:
        """Codes: ok, not_found, decided, expired, busy (another live claim)."""
        raise NotImplementedError

    async def _settle(self, approval_id: str, token: str, status: str | None, by: str,
                      now: float) -> tuple[str, Approval | None]:
        """Commit ``status`` (ok, not_found, decided, busy) or, with None, release our claim."""
        raise NotImplementedError

    async def _live(self, now: float) -> list[Approval]:
        raise NotImplementedError


class MemoryApprovals(Approvals):
    """One node's approvals, bounded; single-threaded asyncio makes each primitive atomic."""

    def __init__(self, ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.time,
                 max_entries: int = DEFAULT_MAX_ENTRIES, max_pending: int = MAX_PENDING) -> None:
        super().__init__(ttl_s, clock, max_pending)
        self.max_entries = max_entries
        self._approvals: dict[str, Approval] = {}  # by id, in creation order (= expiry order)
        self._keys: dict[str, str] = {}  # approval id -> its request key
        self._index: dict[str, str] = {}  # request key -> id of its open approval
        self._claims: dict[str, tuple[str, float]] = {}  # id -> (token, lease end)
        # requester -> ids of its approvals that may still be pending, oldest first
        self._waiting: dict[Requester, dict[str, None]] = {}

    def __len__(self) -> int:
        return len(self._approvals)

    def _drop_oldest(self) -> None:
        approval_id, approval = next(iter(self._approvals.items()))
        del self._approvals[approval_id]
        self._claims.pop(approval_id, None)
        key = self._keys.pop(approval_id)
        if self._index.get(key) == approval_id:
            del self._index[key]
        waiting = self._waiting.get(approval.requester, {})
        waiting.pop(approval_id, None)
        if not waiting:
            self._waiting.pop(approval.requester, None)

    def _purge(self, now: float) -> None:
        """Drop expired approvals, and only those."""
        while self._approvals and next(iter(self._approvals.values())).expires <= now:
            self._drop_oldest()

    def _pending_of(self, requester: Requester) -> list[Approval]:
        """The requester's approvals still waiting for a decision, oldest first (its index pruned)."""
        found = [a for a in map(self._approvals.get, self._waiting.get(requester, ()))
                 if a is not None and a.status == "pending"]
        if found:
            self._waiting[requester] = dict.fromkeys(a.id for a in found)
        else:
            self._waiting.pop(requester, None)
        return found

    async def _lookup(self, key: str, now: float, consume: bool,
                      new: Approval | None) -> tuple[str, Approval | None]:
        found = self._approvals.get(self._index.get(key, ""))
        if found is not None and found.status != "used" and found.expires > now:
            if found.status == "approved" and consume:
                found = self._approvals[found.id] = replace(found, status="used", used_at=now)
                del self._index[key]
                return "redeemed", found
            return found.status, found
        if new is None:
            return "none", None
        self._purge(now)
        waiting = self._pending_of(new.requester)
        if len(waiting) >= self.max_pending:
            return "too_many", waiting[0]
        if len(self._approvals) >= self.max_entries:
            return "full", next(iter(self._approvals.values()))
        self._approvals[new.id], self._keys[new.id], self._index[key] = new, key, new.id
        self._waiting.setdefault(new.requester, {})[new.id] = None
        return "created", new

    async def _get(self, approval_id: str) -> Approval | None:
        return self._approvals.get(approval_id)

    def _claimed_by_other(self, approval_id: str, token: str, now: float) -> bool:
        claim = self._claims.get(approval_id)
        return claim is not None and claim[0] != token and claim[1] > now

    async def _claim(self, approval_id: str, token: str, now: float,
                     until: float) -> tuple[str, Approval | None]:
        approval = self._approvals.get(approval_id)
        if approval is None:
            return "not_found", None
        if approval.status != "pending":
            return "decided", approval
        if approval.expires <= now:
            return "expired", approval
        if self._claimed_by_other(approval_id, token, now):
            return "busy", approval
        self._claims[approval_id] = (token, until)
        return "ok", approval

    async def _settle(self, approval_id: str, token: str, status: str | None, by: str,
                      now: float) -> tuple[str, Approval | None]:
        approval = self._approvals.get(approval_id)
        if approval is None:
            return "not_found", None
        if status is None:
            if self._claims.get(approval_id, (token,))[0] == token:
                self._claims.pop(approval_id, None)
            return "released", approval
        if approval.status != "pending":
            return "decided", approval
        if self._claimed_by_other(approval_id, token, now):
            return "busy", approval
        self._claims.pop(approval_id, None)
        approval = self._approvals[approval_id] = replace(approval, status=status,  # type: ignore[arg-type]
                                                          decided_by=by, decided_at=now)
        return "ok", approval

    async def _live(self, now: float) -> list[Approval]:
        self._purge(now)
        return list(self._approvals.values())
