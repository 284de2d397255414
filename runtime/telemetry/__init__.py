"""OpenTelemetry tracing of MCP requests, configured by the standard ``OTEL_*`` environment variables
and off by default.

This module only decides whether a node traces (:func:`settings_from`); it imports nothing of
OpenTelemetry, so a node that does not trace never loads the SDK, and its requests take no span,
context or propagation step at all (the hooks are chosen once, when the node is built). The spans
themselves are in ``spans.py``, imported by :func:`start` only.

When a node traces:

- tracing is asked for: ``OTEL_TRACES_EXPORTER=otlp``, or an OTLP endpoint
  (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``);
- and not refused: ``OTEL_SDK_DISABLED=true`` and ``OTEL_TRACES_EXPORTER=none`` turn it off whatever
  else is set.

With none of these set the node does not trace. (The SDK's own default exporter is OTLP to
localhost:4318; a gateway sends nothing anywhere until an operator says where.) Anything the node
cannot honour is a startup error rather than a silent "off": another exporter than ``otlp`` (the
console exporter would write to stdout, where audit records may go), another protocol than
``http/protobuf``, or tracing asked for on a node installed without the ``otel`` extra.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gwc.runtime.telemetry.spans import Tracing

DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"  # the OTLP/HTTP default, when none is set
PROTOCOL = "http/protobuf"  # the one OTLP protocol the node exports with
EXTRA = "pip install 'gwc[otel]'"
# what the node needs when it traces (the `otel` extra)
SDK_MODULES = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")


class TracingError(ValueError):
    """The ``OTEL_*`` variables ask for tracing the node cannot do; the message says what to change."""


@dataclass(frozen=True)
class TracingSettings:
    """What the environment asked for, as far as the node decides it (the SDK and the exporter
    read the rest of ``OTEL_*`` themselves: headers, timeouts, sampler, batching, resource)."""

    endpoint: str  # where spans go, for the startup log line


def _get(environ: Mapping[str, str], *names: str) -> str | None:
    """The first of ``names`` set to something (OpenTelemetry: an empty value counts as unset)."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def settings_from(environ: Mapping[str, str]) -> TracingSettings | None:
    """Whether the ``OTEL_*`` variables turn tracing on (None: off), or :class:`TracingError`."""
    if (_get(environ, "OTEL_SDK_DISABLED") or "").lower() == "true":
        return None
    exporters = _get(environ, "OTEL_TRACES_EXPORTER")
    endpoint = _get(environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if endpoint is None and (base := _get(environ, "OTEL_EXPORTER_OTLP_ENDPOINT")) is not None:
        endpoint = base.rstrip("/") + "/v1/traces"
    if exporters is not None:
        names = {name.strip().lower() for name in exporters.split(",") if name.strip()}
        if names == {"none"}:
            return None
        if names != {"otlp"}:
            raise TracingError(f"OTEL_TRACES_EXPORTER={exporters}: gwc-runtime exports traces "
                               "with otlp (OTLP over HTTP) only, or none")
    elif endpoint is None:
        return None  # nothing asked for: off by default
    protocol = _get(environ, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol is not None and protocol != PROTOCOL:
        raise TracingError(f"OTLP protocol {protocol}: gwc-runtime exports traces with "
                           f"{PROTOCOL} only (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "
                           "OTEL_EXPORTER_OTLP_PROTOCOL)")
    missing = [name for name in SDK_MODULES if not _importable(name)]
    if missing:
        raise TracingError(f"the OTEL_* variables ask for tracing, but the OpenTelemetry SDK and "
                           f"OTLP exporter are not installed ({', '.join(missing)}): {EXTRA}, or "
                           "unset OTEL_TRACES_EXPORTER and OTEL_EXPORTER_OTLP_*ENDPOINT")
    return TracingSettings(endpoint or DEFAULT_ENDPOINT)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


def start(settings: TracingSettings, node: str) -> Tracing:
    """The node's tracer, exporting in the background (loads the SDK)."""
    from gwc.runtime.telemetry.spans import Tracing
    return Tracing(settings.endpoint, node)
