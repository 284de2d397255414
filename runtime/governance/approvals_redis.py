"""Approvals shared by a fleet through Redis: the hash an approval is stored as, the three Lua scripts
(lookup/redeem/create, claim, settle) and :class:`RedisApprovals`. What approvals mean, and how this
backend fails (closed), is in :mod:`gwc.runtime.governance.approvals`."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from hashlib import sha256
from typing import TYPE_CHECKING, cast

from gwc.runtime.bundle.canonical import canonical_json
from gwc.runtime.governance.approvals import (
    DEFAULT_TTL_S,
    LIST_MAX,
    MAX_PENDING,
    Approval,
    Approvals,
    Requester,
)
from gwc.runtime.governance.backend import Script, pairs, redis_errors, unavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis


# Every approval hash field is a string; "" stands for None.
def _to_hash(approval: Approval) -> list[str]:
    req = approval.requester
    fields = {"id": approval.id, "subject": req.subject, "kind": req.kind,
              "acting_for": req.acting_for or "", "server": approval.server, "tool": approval.tool,
              "digest": approval.arguments_digest, "approvers": json.dumps(list(approval.approvers)),
              "status": approval.status, "created": repr(approval.created),
              "expires": repr(approval.expires), "arguments": approval.arguments or ""}
    return [part for item in fields.items() for part in item]


def _from_hash(h: dict[str, str]) -> Approval | None:
    if not h:
        return None

    def opt_time(name: str) -> float | None:
        return float(h[name]) if h.get(name) else None

    return Approval(h["id"], Requester(h["subject"], h["kind"], h["acting_for"] or None), h["server"],
                    h["tool"], h["digest"], tuple(json.loads(h["approvers"])), h["status"],  # type: ignore[arg-type]
                    float(h["created"]), float(h["expires"]), h.get("decided_by") or None,
                    opt_time("decided_at"), opt_time("used_at"), h.get("arguments") or None)


# KEYS: the request's index key, the listing zset, the requester's zset of approvals that may still
# be pending. ARGV: hash key prefix, now, consume ('1'/'0'), new id ('' = do not create), its TTL in
# ms, its expiry, the most approvals a requester may have pending, its hash fields and values.
LOOKUP = Script("""
local now = tonumber(ARGV[2])
local id = redis.call('GET', KEYS[1])
if id then
  local key = ARGV[1] .. id
  local status = redis.call('HGET', key, 'status')
  local expires = tonumber(redis.call('HGET', key, 'expires') or '0')
  if status and status ~= 'used' and expires > now then
    if status == 'approved' and ARGV[3] == '1' then
      redis.call('HSET', key, 'status', 'used', 'used_at', ARGV[2])
      redis.call('DEL', KEYS[1])
      return {'redeemed', redis.call('HGETALL', key)}
    end
    return {status, redis.call('HGETALL', key)}
  end
end
if ARGV[4] == '' then return {'none', {}} end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
local oldest, waiting = nil, 0
for _, other in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  if redis.call('HGET', ARGV[1] .. other, 'status') == 'pending' then
    waiting = waiting + 1
    oldest = oldest or other
  else
    redis.call('ZREM', KEYS[3], other)
  end
end
if waiting >= tonumber(ARGV[7]) then
  return {'too_many', redis.call('HGETALL', ARGV[1] .. oldest)}
end
local key = ARGV[1] .. ARGV[4]
redis.call('HSET', key, unpack(ARGV, 8))
redis.call('PEXPIRE', key, ARGV[5])
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
return {'created', redis.call('HGETALL', key)}
""")

# KEYS: the approval. ARGV: now, claim token, lease end.
CLAIM = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return {'not_found', {}} end
local now = tonumber(ARGV[1])
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then
  return {'decided', redis.call('HGETALL', KEYS[1])}
end
if tonumber(redis.call('HGET', KEYS[1], 'expires')) <= now then
  return {'expired', redis.call('HGETALL', KEYS[1])}
end
local claim = redis.call('HGET', KEYS[1], 'claim')
local lease = tonumber(redis.call('HGET', KEYS[1], 'claim_until') or '0')
if claim and claim ~= ARGV[2] and lease > now then return {'busy', redis.call('HGETALL', KEYS[1])} end
redis.call('HSET', KEYS[1], 'claim', ARGV[2], 'claim_until', ARGV[3])
return {'ok', redis.call('HGETALL', KEYS[1])}
""")

# KEYS: the approval. ARGV: now, claim token, status to commit ('' = release the claim), decided by.
SETTLE = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return {'not_found', {}} end
local claim = redis.call('HGET', KEYS[1], 'claim')
if ARGV[3] == '' then
  if claim == ARGV[2] then redis.call('HDEL', KEYS[1], 'claim', 'claim_until') end
  return {'released', {}}
end
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then
  return {'decided', redis.call('HGETALL', KEYS[1])}
end
local lease = tonumber(redis.call('HGET', KEYS[1], 'claim_until') or '0')
if claim and claim ~= ARGV[2] and lease > tonumber(ARGV[1]) then
  return {'busy', redis.call('HGETALL', KEYS[1])}
end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'decided_by', ARGV[4], 'decided_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'claim', 'claim_until')
return {'ok', redis.call('HGETALL', KEYS[1])}
""")


class RedisApprovals(Approvals):
    """A fleet's approvals in Redis (``client`` from :func:`gwc.runtime.governance.backend.connect`,
    built with ``decode_responses=True``); fails closed with :class:`StateUnavailable`."""

    PREFIX = "{gwc:ap}:"

    def __init__(self, client: Redis, ttl_s: float = DEFAULT_TTL_S,
                 clock: Callable[[], float] = time.time, max_pending: int = MAX_PENDING) -> None:
        super().__init__(ttl_s, clock, max_pending)
        self._redis = client
        self._hash = self.PREFIX + "a:"
        self._list = self.PREFIX + "list"

    async def _lookup(self, key: str, now: float, consume: bool,
                      new: Approval | None) -> tuple[str, Approval | None]:
        args: list[str] = [self._hash, repr(now), "1" if consume else "0"]
        requester = ""  # the script reads the requester's approvals only to create one
        if new is not None:
            ttl_ms = max(1, int((new.expires - now) * 1000))
            args += [new.id, str(ttl_ms), repr(new.expires), str(self.max_pending), *_to_hash(new)]
            requester = sha256(canonical_json(new.requester.as_dict())).hexdigest()
        else:
            args.append("")
        keys = [self.PREFIX + "r:" + key, self._list, self.PREFIX + "q:" + requester]
        code, flat = await LOOKUP(self._redis, keys, args)
        return code, _from_hash(pairs(flat))

    async def _get(self, approval_id: str) -> Approval | None:
        try:
            # The client decodes replies (decode_responses=True): str, where redis-py's types say bytes | str.
            return _from_hash(cast("dict[str, str]", await self._redis.hgetall(self._hash + approval_id)))
        except redis_errors() as exc:
            raise unavailable(exc) from exc

    async def _claim(self, approval_id: str, token: str, now: float,
                     until: float) -> tuple[str, Approval | None]:
        code, flat = await CLAIM(self._redis, [self._hash + approval_id], [repr(now), token, repr(until)])
        return code, _from_hash(pairs(flat))

    async def _settle(self, approval_id: str, token: str, status: str | None, by: str,
                      now: float) -> tuple[str, Approval | None]:
        code, flat = await SETTLE(self._redis, [self._hash + approval_id],
                                  [repr(now), token, status or "", by])
        return code, _from_hash(pairs(flat))

    async def _live(self, now: float) -> list[Approval]:
        try:
            ids = cast("list[str]", await self._redis.zrangebyscore(  # decoded replies, as above
                self._list, f"({now!r}", "+inf", start=0, num=LIST_MAX))
            async with self._redis.pipeline(transaction=False) as pipe:
                for approval_id in ids:
                    pipe.hgetall(self._hash + approval_id)
                pipe.zremrangebyscore(self._list, "-inf", repr(now))
                found = await pipe.execute()
        except redis_errors() as exc:
            raise unavailable(exc) from exc
        return [a for a in map(_from_hash, found[:-1]) if a is not None]
