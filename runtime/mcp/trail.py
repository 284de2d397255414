"""The node's audit trail: where records go (``--audit``) and what happens when they cannot be
written (``--audit-failure``); what a record says is ``gwc.runtime.audit.record``.

A record is written once a request is settled (answered, refused or failed) and the answer waits
for it to be durable: a node that crashes has a record of every answer it gave. Before a call is
forwarded the sink must be healthy; with ``closed`` (the default) an unhealthy sink refuses the
call, so nothing reaches an upstream unrecorded. The refusal is itself submitted for writing, which
doubles as the probe that finds the sink healthy again. With ``open`` calls go on, and every lost
record is logged and counted (``gwc_audit_failures_total``). A failing sink with ``closed`` also
makes the node unready (``refusing``). The node's chain head, signed, is served for anchoring.

With ``audit.store`` in gateway.yaml (read from the first bundle, like the sink) and a trail file,
closed files are shipped to an object store (``gwc.runtime.audit.shipper``); the module, and
boto3, are loaded only then.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gwc.runtime.audit.chain import UnencodableRecord, utc_time
from gwc.runtime.audit.record import record_head
from gwc.runtime.audit.writer import DEFAULT_MAX_BYTES, AuditWriter
from gwc.runtime.bundle.format import AuditSettings, AuditStore
from gwc.runtime.bundle.read import Bundle
from gwc.runtime.metrics import Metrics
from gwc.runtime.policy.decide import Principal
from gwc.runtime.protocol.errors import AUDIT_UNAVAILABLE, RpcError
from gwc.runtime.request_keys import CLIENT_REQUEST_ID, REQUEST_ID

if TYPE_CHECKING:
    from gwc.runtime.audit.shipper import Shipper

log = logging.getLogger("gwc.audit")
FailureMode = Literal["closed", "open"]
SINKS = ("stdout", "file", "both", "none")


class AuditSpecError(ValueError):
    """``--audit`` is not one of stdout, file:PATH, both:PATH, none."""


@dataclass(frozen=True)
class AuditTarget:
    """Where a node writes its trail: a file, stdout, both, or nowhere (benchmarks only)."""

    sink: str
    path: Path | None = None

    @classmethod
    def parse(cls, spec: str) -> AuditTarget:
        sink, _, path = spec.partition(":")
        if sink not in SINKS:
            raise AuditSpecError(f"--audit must be stdout, file:PATH, both:PATH or none, not {spec!r}")
        if (sink in ("file", "both")) != bool(path):
            raise AuditSpecError(f"--audit {sink} " + ("needs a path: file:PATH or both:PATH"
                                                        if path == "" else "takes no path"))
        return cls(sink, Path(path) if path else None)

    @classmethod
    def of_bundle(cls, audit: AuditSettings) -> AuditTarget:
        return cls(audit.sink, Path(audit.path) if audit.sink != "stdout" and audit.path else None)


class Auditor:
    def __init__(self, node: str, metrics: Metrics, failure: FailureMode = "closed",
                 signing_key: Ed25519PrivateKey | None = None) -> None:
        self.node, self._metrics, self.failure = node, metrics, failure
        self._signing_key = signing_key  # signs checkpoints of the chain's head
        self._writer: AuditWriter | None = None
        self._broken: str | None = None  # why the sink could not even be opened
        self.target: AuditTarget | None = None
        self.shipper: Shipper | None = None

    def start(self, target: AuditTarget, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.target = target
        if target.sink == "none":
            log.warning("audit trail is off (--audit none): calls leave no record; use this "
                        "for benchmarks only")
            return
        writer = AuditWriter(self.node, target.path, stdout=target.sink in ("stdout", "both"),
                             max_bytes=max_bytes, signing_key=self._signing_key)
        try:
            writer.start()
        except (OSError, ValueError) as exc:  # e.g. an unwritable path; the node says so and
            self._broken = f"cannot open the audit trail {target.path}: {exc}"  # refuses calls
            log.error("audit trail unavailable", extra={"reason": self._broken})
            return
        self._writer = writer
        self._metrics.audit_sequence.set_function(lambda: writer.sequence)
        log.info("audit trail", extra={"sink": target.sink, "path": str(target.path or ""),
                                       "on_failure": self.failure})

    def ship(self, store: AuditStore | None) -> None:
        """Ship closed trail files to ``store`` (gateway.yaml's ``audit.store``), once: from the
        first bundle, after :meth:`start`; a later change needs a restart."""
        writer, path = self._writer, self.target.path if self.target is not None else None
        if store is None:
            return
        if writer is None or path is None:
            log.warning("gateway.yaml has an audit store, but this node writes no trail file, so "
                        "it ships nothing", extra={"sink": self.target.sink if self.target
                                                   else "", "store": store.url})
            return
        from gwc.runtime.audit.objects import StoreUrl
        from gwc.runtime.audit.shipper import Shipper

        metrics = self._metrics
        shipper = Shipper(path, StoreUrl.parse(store.url),
                          store.object_lock,
                          store.keep_local_days, lambda: writer.chain,
                          on_shipped=metrics.audit_shipped.inc,
                          on_failure=lambda reason: metrics.audit_ship_failures.labels(reason).inc())
        writer.on_closed, writer.close_rotates = shipper.closed, True
        writer.max_file_age_s = store.max_file_age_minutes * 60.0
        shipper.start()
        self.shipper = shipper
        metrics.audit_ship_pending.set_function(lambda: shipper.stats.pending)
        metrics.audit_ship_oldest.set_function(shipper.oldest_age)
        log.info("audit store", extra={"store": store.url, "object_lock": store.object_lock.mode,
                                       "days": store.object_lock.days,
                                       "keep_local_days": store.keep_local_days,
                                       "max_file_age_minutes": store.max_file_age_minutes})

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()  # closes the current file for shipping, with a store
        if self.shipper is not None:
            self.shipper.close()

    @property
    def enabled(self) -> bool:
        """Records are made (not ``--audit none``); whether they can be written is another matter."""
        return self._writer is not None or self._broken is not None

    @property
    def refusing(self) -> bool:
        """Calls are refused for want of a trail: it is failing and failures close the door."""
        failing = self._broken is not None or (self._writer is not None
                                               and not self._writer.healthy)
        return failing and self.failure == "closed"

    def check_ready(self) -> None:
        """Before forwarding: refuse while :attr:`refusing`."""
        if self.refusing:
            raise RpcError(AUDIT_UNAVAILABLE, "the audit trail cannot be written, so the gateway "
                           "forwards no calls until it can (audit failure mode: closed)", 503)

    def record(self, request: web.Request, bundle: Bundle, principal: Principal,
               type_: str) -> dict[str, Any]:
        """The fields every record of a request has."""
        return record_head(type_, utc_time(time.time()), request[REQUEST_ID],
                           request.get(CLIENT_REQUEST_ID), self.node, bundle.digest, bundle.serial,
                           principal)

    async def write(self, record: dict[str, Any]) -> None:
        """Return once the record is durable. Raises RpcError(audit_unavailable) when it could
        not be written and the failure mode is closed."""
        if self._writer is None and self._broken is None:
            return
        try:
            if self._writer is None:
                raise OSError(self._broken)
            await self._writer.submit(record)
        except Exception as exc:  # unencodable at submit; a write error through the future
            self._metrics.count_audit_failure()
            if self.failure == "closed":
                if isinstance(exc, UnencodableRecord):  # the writer logs only I/O failures
                    log.error("audit record cannot be encoded", extra={
                        "request_id": record.get("request_id"), "reason": str(exc)})
                raise RpcError(AUDIT_UNAVAILABLE, "the audit record of this request could not "
                               "be written, so its answer is withheld", 503) from exc
            log.error("audit record lost (audit failure mode: open)", extra={
                "request_id": record.get("request_id"), "reason": str(exc)})

    def head(self) -> web.Response:
        """This node's latest signed checkpoint as JSON, to keep where the node cannot rewrite
        it (``gwc audit verify --anchor``); 404 while there is none."""
        head = self._writer.head if self._writer is not None else None
        if head is None:
            return web.json_response({"error": {"reason": "no_audit_head", "message": "this node "
                                      "has signed no audit head: its trail is off or could not "
                                      "be opened"}}, status=404)
        return web.json_response(head.fields())
