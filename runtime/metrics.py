"""Prometheus metrics of one runtime node (its own registry, so several nodes can share a process
in tests)."""
from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.bundle_serial = Gauge("gwc_bundle_serial", "Serial of the active bundle.", registry=r)
        self._activated_at = 0.0
        self.bundle_age = Gauge("gwc_bundle_age_seconds", "Seconds since the active bundle was "
                                "activated.", registry=r)
        self.bundle_age.set_function(
            lambda: time.time() - self._activated_at if self._activated_at else float("nan"))
        self.bundle_loads = Counter("gwc_bundle_loads_total", "Bundle polls by result "
                                    "(activated, unchanged, refused, fetch_error).", ["result"],
                                    registry=r)
        self.bundle_activation = Histogram("gwc_bundle_activation_seconds", "From fetched bytes "
                                           "to the swap: verify, parse, vet, persist.",
                                           buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                           registry=r)
        self.requests = Counter("gwc_requests_total", "MCP requests by server, tool and decision.",
                                ["server", "method", "tool", "decision"], registry=r)
        self.latency = Histogram("gwc_request_seconds", "Time in the gateway per MCP request, "
                                 "upstream included.", ["server"], buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.upstream_latency = Histogram("gwc_upstream_seconds", "Upstream response time.",
                                          ["server"], buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_errors = Counter("gwc_upstream_errors_total", "Upstream failures by reason.",
                                       ["server", "reason"], registry=r)
        self.upstream_rejected = Counter("gwc_upstream_rejected_total", "Calls failed fast without "
                                         "reaching the upstream (breaker_open, busy).",
                                         ["server", "reason"], registry=r)
        self.upstream_inflight = Gauge("gwc_upstream_inflight", "Calls in flight per upstream.",
                                       ["server"], registry=r)
        self.upstream_breaker = Gauge("gwc_upstream_breaker_state", "Circuit breaker per upstream: "
                                      "0 closed, 1 half-open, 2 open.", ["server"], registry=r)
        self.upstream_sessions = Counter("gwc_upstream_sessions_total", "Upstream MCP sessions "
                                         "opened by this node, by reason (new, expired).",
                                         ["server", "reason"], registry=r)
        self.catalog_fetches = Counter("gwc_catalog_fetches_total", "Upstream list fetches for the "
                                       "aggregate endpoint, by result.", ["server", "result"],
                                       registry=r)
        self.tool_drift = Counter("gwc_tool_drift_total", "Changes of a pinned tool's live "
                                  "definition away from its pin, as this node saw them.",
                                  ["server", "tool"], registry=r)
        self.tool_drifted = Gauge("gwc_tool_drifted", "1 while a pinned tool's live definition "
                                  "differs from its pin, else 0.", ["server", "tool"], registry=r)
        self.open_streams = Gauge("gwc_list_changed_streams", "Open GET streams waiting for "
                                  "notifications/tools/list_changed.", registry=r)

        self.audit_failures = Counter("gwc_audit_failures_total", "Audit records that could not "
                                      "be written (the call was refused, or with --audit-failure "
                                      "open, went on unrecorded).", registry=r)
        self.audit_sequence = Gauge("gwc_audit_sequence", "Number of the last durable record of "
                                    "this node's audit trail, counted from its first record: it "
                                    "only grows, so a drop means records went missing.",
                                    registry=r)
        self.audit_ship_pending = Gauge("gwc_audit_ship_pending", "Closed audit trail files not "
                                        "yet confirmed in the object store (audit.store).",
                                        registry=r)
        self.audit_ship_oldest = Gauge("gwc_audit_ship_oldest_pending_seconds", "Seconds since "
                                       "the oldest closed audit file not yet confirmed in the "
                                       "object store was closed; 0 when none waits.", registry=r)
        self.audit_shipped = Counter("gwc_audit_shipped_total", "Closed audit files confirmed in "
                                     "the object store, under retention.", registry=r)
        self.audit_ship_failures = Counter("gwc_audit_ship_failures_total", "Failed attempts to "
                                           "ship an audit file, by reason (store: unreachable or "
                                           "refused, retried; conflict: other bytes at its key; "
                                           "unlocked: no retention on the object; unreadable: "
                                           "not a closed trail file).", ["reason"], registry=r)
        self.state_fallbacks = Counter("gwc_state_fallbacks_total", "Outages of the shared state "
                                       "backend (Redis) during which rate limits held per node.",
                                       ["what"], registry=r)

        self.sign_in = Counter("gwc_sign_in_total", "Steps of signing in through the gateway by "
                               "step (authorize, callback, consent, code: a code issued, token, "
                               "register) and outcome (ok, or the OAuth error answered).",
                               ["step", "outcome"], registry=r)

        # Label lookups take a lock and build a tuple each time; the hot path reuses the children.
        self._children: dict[tuple[object, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def count_request(self, server: str, method: str, tool: str, decision: str) -> None:
        self._child(self.requests, server, method, tool, decision).inc()

    def count_sign_in(self, step: str, outcome: str) -> None:
        self._child(self.sign_in, step, outcome).inc()

    def count_upstream_error(self, server: str, reason: str) -> None:
        self._child(self.upstream_errors, server, reason).inc()

    def count_upstream_rejected(self, server: str, reason: str) -> None:
        self._child(self.upstream_rejected, server, reason).inc()

    def count_audit_failure(self) -> None:
        self.audit_failures.inc()

    def observe_latency(self, server: str, seconds: float) -> None:
        self._child(self.latency, server).observe(seconds)

    def observe_upstream(self, server: str, seconds: float) -> None:
        self._child(self.upstream_latency, server).observe(seconds)

    def count_bundle_load(self, result: str) -> None:
        self.bundle_loads.labels(result).inc()

    def bundle_activated(self, serial: int, activation_s: float) -> None:
        self.bundle_serial.set(serial)
        self.bundle_activation.observe(activation_s)
        self._activated_at = time.time()

    def render(self) -> bytes:
        return generate_latest(self.registry)
