"""Runtime settings: every flag also comes from a ``GWC_*`` environment variable (12-factor)."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from gwc.runtime.audit.writer import DEFAULT_MAX_BYTES as DEFAULT_AUDIT_MAX_BYTES
from gwc.runtime.governance.state import REDIS_SCHEMES
from gwc.runtime.mcp.sealed_sessions import DEFAULT_MAX_AGE_S, SessionKeyError, parse_key
from gwc.runtime.mcp.trail import AuditSpecError, AuditTarget, FailureMode
from gwc.runtime.telemetry import TracingError, TracingSettings, settings_from

ENV_PREFIX = "GWC_"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
LOG_LEVELS = ("debug", "info", "warning", "error")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
AUDIT_FAILURE_MODES: dict[str, FailureMode] = {"closed": "closed", "open": "open"}
DEFAULT_APPROVAL_TTL_S = 900
# A connection must send a request's headers within this many seconds of opening or of its last
# answer (idle keep-alive connections close then too); longer than load balancers' usual 60 s
# idle timeout, so the node is not the side that closes a connection they are about to reuse.
DEFAULT_HEADER_TIMEOUT_S = 75.0
DEFAULT_BODY_TIMEOUT_S = 30.0  # a request's body must arrive within this many seconds
MAX_AUDIT_FILE_BYTES = 5 << 30  # S3's largest single PUT: a closed trail file ships in one


class ConfigError(Exception):
    """A setting is missing or wrong; the message is the one line printed at startup."""


@dataclass(frozen=True)
class Config:
    bundle: str
    trust: tuple[str, ...]
    listen_host: str
    listen_port: int
    signing_key: Path
    public_url: str
    accept_keys: tuple[Path, ...] = ()  # other gateway public keys: a signing-key rotation
    poll_interval_s: float = 30.0
    state_dir: Path | None = None
    log_level: str = "info"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    session_keys: tuple[bytes, ...] = ()
    session_max_age_s: int = DEFAULT_MAX_AGE_S
    event_loop: str = "auto"
    audit: AuditTarget | None = None  # None: gateway.yaml's audit settings, from the bundle
    audit_failure: FailureMode | None = None  # None: gateway.yaml's audit.on_failure
    audit_max_bytes: int = DEFAULT_AUDIT_MAX_BYTES
    state: str = "memory"
    approval_ttl_s: int = DEFAULT_APPROVAL_TTL_S
    node_id: str = ""  # "": this machine's hostname and the listen port
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    idp_client_secret: str | None = None  # the gateway's secret at the IdP (sign-in)
    dev_client_metadata: bool = False  # client metadata documents over http and from private hosts
    tracing: TracingSettings | None = None  # None: no tracing (the OTEL_* variables, telemetry/)
    drain_s: float = 0.0  # after SIGTERM: unready, still serving, for this long before stopping
    metrics_host: str | None = None  # set: /metrics on its own listener, not the public one
    metrics_port: int = 0


# Settings that hold secrets (a session key, a Redis password in its URL, the IdP client secret)
# can also be read from a file named by GWC_<NAME>_FILE, as mounted Kubernetes and Docker secrets
# are, so they need not sit in the process environment.
SECRET_SETTINGS = ("session-keys", "state", "idp-client-secret")


def _env(name: str) -> str | None:
    value = os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"))
    if value:
        return value.strip() if name in SECRET_SETTINGS else value
    if name in SECRET_SETTINGS and (path := _env(f"{name}-file")) is not None:
        return _secret_file(f"GWC_{name.upper().replace('-', '_')}_FILE", path)
    return None


def _secret_file(setting: str, path: str) -> str:
    """A secret read from a file, without the newline editors and ``kubectl create secret
    --from-file`` leave at its end."""
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {setting} {path}: {exc.strerror or exc}") from None
    if not secret:
        raise ConfigError(f"{setting} {path} is empty")
    return secret


def _host_port(setting: str, value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{setting} must be HOST:PORT")
    return host.strip("[]"), int(port)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gwc-runtime", description="Serve MCP through gwc: verify and hot-load the signed "
        "bundle, enforce identity and policy. Every flag can also be set as GWC_<FLAG>, e.g. "
        "GWC_PUBLIC_URL; GWC_TRUST takes a comma-separated list.")
    p.add_argument("--bundle", help="Bundle file path or http(s) URL (GWC_BUNDLE).")
    p.add_argument("--trust", action="append", help="Trusted bundle public key (PEM); repeat for "
                   "rotation (GWC_TRUST, comma-separated).")
    p.add_argument("--listen", help="HOST:PORT to listen on (GWC_LISTEN, default 127.0.0.1:8080).")
    p.add_argument("--signing-key", help="The gateway's own Ed25519 key (PEM) for minting upstream "
                   "tokens; never the bundle key (GWC_SIGNING_KEY).")
    p.add_argument("--accept-key", action="append", help="Another gateway public key (PEM) this "
                   "node publishes in its JWK Set and whose sign-in tokens it accepts, for the "
                   "overlap of a --signing-key rotation; repeat (GWC_ACCEPT_KEY, "
                   "comma-separated).")
    p.add_argument("--public-url", help="The URL clients use to reach the gateway (GWC_PUBLIC_URL).")
    p.add_argument("--poll-interval", type=float, help="Seconds between bundle polls "
                   "(GWC_POLL_INTERVAL, default 30).")
    p.add_argument("--state-dir", help="Where the last good bundle is kept (GWC_STATE_DIR).")
    p.add_argument("--log-level", help="debug, info, warning or error (GWC_LOG_LEVEL).")
    p.add_argument("--max-body-bytes", type=int, help="Largest accepted request body "
                   "(GWC_MAX_BODY_BYTES, default 4 MiB).")
    p.add_argument("--session-keys", help="Fleet keys sealing legacy MCP session ids, from `gwc "
                   "session-key`; comma-separated: the first seals, all open (GWC_SESSION_KEYS, "
                   "or from a file: GWC_SESSION_KEYS_FILE). "
                   "Without one a node makes its own, and its sessions work only on it.")
    p.add_argument("--session-max-age", type=int, help="Seconds a legacy session id stays valid "
                   f"(GWC_SESSION_MAX_AGE, default {DEFAULT_MAX_AGE_S}).")
    p.add_argument("--event-loop", help="auto (uvloop when installed), asyncio or uvloop "
                   "(GWC_EVENT_LOOP).")
    p.add_argument("--audit", help="Where this node writes its audit trail: stdout, file:PATH, "
                   "both:PATH, or none (benchmarks only) (GWC_AUDIT; default: gateway.yaml's "
                   "audit settings).")
    p.add_argument("--audit-failure", help="closed (refuse calls whose record cannot be "
                   "written) or open (serve them, count the loss) (GWC_AUDIT_FAILURE; default: "
                   "gateway.yaml's audit.on_failure).")
    p.add_argument("--audit-max-bytes", type=int, help="Rotate the audit file at this size "
                   f"(GWC_AUDIT_MAX_BYTES, default {DEFAULT_AUDIT_MAX_BYTES}).")
    p.add_argument("--state", help="Shared state for rate limits, approvals and bypasses: "
                   "memory (this node alone) or redis://HOST:PORT/DB (a fleet) (GWC_STATE, or from a "
                   "file, as the URL may hold a password: GWC_STATE_FILE; default memory).")
    p.add_argument("--approval-ttl", type=int, help="Seconds a pending or granted approval "
                   f"stays usable (GWC_APPROVAL_TTL, default {DEFAULT_APPROVAL_TTL_S}).")
    p.add_argument("--node-id", help="This node's name in audit records (GWC_NODE_ID, default "
                   "this machine's hostname:PORT).")
    p.add_argument("--header-timeout", type=float, help="Seconds a connection may take to send "
                   "a request's headers, from its opening or its last answer; idle connections "
                   f"close then too (GWC_HEADER_TIMEOUT, default {DEFAULT_HEADER_TIMEOUT_S:g}).")
    p.add_argument("--body-timeout", type=float, help="Seconds a request's body may take to "
                   "arrive; a slower one is answered 408 and its connection closed "
                   f"(GWC_BODY_TIMEOUT, default {DEFAULT_BODY_TIMEOUT_S:g}).")
    p.add_argument("--idp-client-secret-file", help="File holding the gateway's client secret at "
                   "the company IdP, for gateway.yaml sign_in (GWC_IDP_CLIENT_SECRET_FILE; or the "
                   "secret itself in GWC_IDP_CLIENT_SECRET, never a flag).")
    p.add_argument("--drain-seconds", type=float, help="After SIGTERM, answer /readyz 503 and go "
                   "on serving for this many seconds before stopping, so a load balancer that "
                   "checks readiness stops sending first; a second SIGTERM stops at once "
                   "(GWC_DRAIN_SECONDS, default 0).")
    p.add_argument("--metrics-listen", help="HOST:PORT of a listener of its own for /metrics, "
                   "which then leaves the public port (GWC_METRICS_LISTEN; default: /metrics on "
                   "the public port).")
    p.add_argument("--dev-client-metadata", action="store_true", default=None,
                   help="Development only: fetch client ID metadata documents over http and from "
                   "loopback or private addresses (GWC_DEV_CLIENT_METADATA=1).")
    return p


def load(argv: list[str] | None = None) -> Config:
    args = parser().parse_args(argv)

    def pick(name: str, default: str | None = None) -> str | None:
        value = getattr(args, name.replace("-", "_"))
        return str(value) if value is not None else (_env(name) or default)

    missing = [f"--{n}" for n in ("bundle", "signing-key", "public-url") if pick(n) is None]
    trust = tuple(args.trust or [t for t in (_env("trust") or "").split(",") if t.strip()])
    if not trust:
        missing.append("--trust")
    if missing:
        raise ConfigError(f"missing {', '.join(missing)} (or the GWC_* environment variables)")
    host, port = _host_port("--listen", pick("listen", "127.0.0.1:8080") or "")
    metrics_host, metrics_port = (_host_port("--metrics-listen", spec)
                                  if (spec := pick("metrics-listen")) else (None, 0))
    public_url = (pick("public-url") or "").rstrip("/")
    if not public_url.startswith(("https://", "http://")):
        raise ConfigError("--public-url must be an http(s) URL")
    try:
        interval = float(pick("poll-interval", "30") or 30)
        max_body = int(pick("max-body-bytes", str(DEFAULT_MAX_BODY_BYTES)) or 0)
        max_age = int(pick("session-max-age", str(DEFAULT_MAX_AGE_S)) or 0)
        audit_max = int(pick("audit-max-bytes", str(DEFAULT_AUDIT_MAX_BYTES)) or 0)
        approval_ttl = int(pick("approval-ttl", str(DEFAULT_APPROVAL_TTL_S)) or 0)
        header_timeout = float(pick("header-timeout", str(DEFAULT_HEADER_TIMEOUT_S)) or 0)
        body_timeout = float(pick("body-timeout", str(DEFAULT_BODY_TIMEOUT_S)) or 0)
        drain = float(pick("drain-seconds", "0") or 0)
    except ValueError as exc:
        raise ConfigError(f"bad number: {exc}") from None
    if audit_max > MAX_AUDIT_FILE_BYTES:
        raise ConfigError("--audit-max-bytes must be at most 5 GiB (5368709120): a closed file "
                          "is shipped in one upload, and S3 takes at most that")
    if not 0 <= drain <= 3600:
        raise ConfigError("--drain-seconds must be between 0 and 3600")
    if min(interval, max_body, max_age, audit_max, approval_ttl, header_timeout,
           body_timeout) <= 0:
        raise ConfigError("--poll-interval, --max-body-bytes, --session-max-age, "
                          "--audit-max-bytes, --approval-ttl, --header-timeout and "
                          "--body-timeout must be positive")
    try:
        audit = AuditTarget.parse(spec) if (spec := pick("audit")) else None
    except AuditSpecError as exc:
        raise ConfigError(str(exc)) from None
    failure_option = pick("audit-failure")
    if failure_option is not None and failure_option not in AUDIT_FAILURE_MODES:
        raise ConfigError("--audit-failure must be closed or open")
    audit_failure = AUDIT_FAILURE_MODES[failure_option] if failure_option is not None else None
    state = pick("state", "memory") or "memory"
    if state != "memory" and not state.startswith(REDIS_SCHEMES):
        raise ConfigError("--state must be memory or a redis://, rediss:// or unix:// URL")
    try:
        session_keys = tuple(parse_key(k) for k in (pick("session-keys") or "").split(",")
                             if k.strip())
    except SessionKeyError as exc:
        raise ConfigError(f"--session-keys: {exc}") from None
    state_dir = pick("state-dir")
    log_level = (pick("log-level", "info") or "info").lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
    event_loop = (pick("event-loop", "auto") or "auto").lower()
    if event_loop not in EVENT_LOOPS:
        raise ConfigError(f"--event-loop must be one of {', '.join(EVENT_LOOPS)}")
    try:
        tracing = settings_from(os.environ)
    except TracingError as exc:
        raise ConfigError(str(exc)) from None
    if state_dir:
        try:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use --state-dir {state_dir}: {exc.strerror or exc}") from None
    accept_keys = tuple(Path(k.strip()) for k in (
        args.accept_key or (_env("accept-key") or "").split(",")) if k.strip())
    return Config(bundle=pick("bundle") or "", trust=tuple(t.strip() for t in trust),
                  accept_keys=accept_keys,
                  listen_host=host, listen_port=port,
                  signing_key=Path(pick("signing-key") or ""), public_url=public_url,
                  poll_interval_s=interval, state_dir=Path(state_dir) if state_dir else None,
                  log_level=log_level, max_body_bytes=max_body, session_keys=session_keys,
                  session_max_age_s=max_age, event_loop=event_loop, audit=audit,
                  audit_failure=audit_failure, audit_max_bytes=audit_max, state=state,
                  approval_ttl_s=approval_ttl, node_id=pick("node-id") or "",
                  header_timeout_s=header_timeout, body_timeout_s=body_timeout,
                  idp_client_secret=(_secret_file("--idp-client-secret-file", path)
                                     if (path := pick("idp-client-secret-file"))
                                     else _env("idp-client-secret")),
                  dev_client_metadata=(args.dev_client_metadata
                                       or _env("dev-client-metadata") in ("1", "true", "yes")),
                  tracing=tracing, drain_s=drain, metrics_host=metrics_host,
                  metrics_port=metrics_port)
