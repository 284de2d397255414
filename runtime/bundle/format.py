"""The compiled bundle payload, format ``gwc.bundle/v1``: the contract between compiler and runtime.

Everything the runtime needs is pre-resolved by the compiler: audiences are sets of groups, users and
agents; every tool carries its resolved access class, mode, limits and approval, plus the indexes of
the allow and deny rules that can apply to it (rules whose server, tool and action cover it). The
runtime does lookups, never interpretation. The compiler builds these models and dumps them; the
runtime validates the same models when it loads a bundle.
"""
from __future__ import annotations

import re
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gwc.runtime.bundle.tool_definitions import input_validator

FORMAT_V1 = "gwc.bundle/v1"
KNOWN_FORMATS = (FORMAT_V1,)

Access = Literal["read", "write"]
Mode = Literal["enforce", "shadow"]
Scalar = bool | int | float | str


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Audience(_Frozen):
    """Who a server is visible to, or who may approve: ``team:``/``group:`` entries are IdP groups."""

    everyone: bool = False
    groups: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()

    def entries(self) -> tuple[str, ...]:
        """The audience as entries an owner would write (``everyone``, ``group:X`` for teams and
        groups both, ``user:S``, ``agent:A``): for reports, diffs and an approval's approvers."""
        return (*(("everyone",) if self.everyone else ()), *(f"group:{g}" for g in self.groups),
                *(f"user:{u}" for u in self.users), *(f"agent:{a}" for a in self.agents))

    # Sets are derived lazily: a 2,000-server bundle loads without building sets it never uses.
    @cached_property
    def group_set(self) -> frozenset[str]:
        return frozenset(self.groups)

    @cached_property
    def user_set(self) -> frozenset[str]:
        return frozenset(self.users)

    @cached_property
    def agent_set(self) -> frozenset[str]:
        return frozenset(self.agents)

    def admits(self, subject: str, groups: frozenset[str], is_agent: bool) -> bool:
        return (self.everyone or subject in self.user_set
                or (is_agent and subject in self.agent_set)
                or not self.group_set.isdisjoint(groups))


class Condition(_Frozen):
    """A constraint on one argument (``path`` is the dotted path split). All present operators apply."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    arg: str
    path: tuple[str, ...]
    in_: tuple[Scalar, ...] | None = Field(default=None, alias="in")
    not_in: tuple[Scalar, ...] | None = None
    pattern: str | None = None
    min: int | float | None = None
    max: int | float | None = None

    @cached_property
    def regex(self) -> re.Pattern[str] | None:
        return re.compile(self.pattern) if self.pattern is not None else None


class Subject(_Frozen):
    kind: Literal["group", "user", "agent"]
    value: str


class Rule(_Frozen):
    id: str
    effect: Literal["allow", "deny"]
    subject: Subject
    server: str
    tools: tuple[str, ...] | None = None
    actions: tuple[Access, ...]
    conditions: tuple[Condition, ...] = ()
    rate_limit_per_minute: int | None = None
    rate_limit_burst: int | None = None  # None: the whole rate at once (gwc.runtime.governance.limits)
    source: str


class LimitSettings(_Frozen):
    per_user_rpm: int | None = None
    per_user_burst: int | None = None


class ServerLimitSettings(LimitSettings):
    upstream_rpm: int | None = None
    upstream_burst: int | None = None


class ApprovalSettings(_Frozen):
    approvers: Audience


class PinnedTool(_Frozen):
    """A tool's definition as its owners reviewed it (``gwc pin``, ``registry/<server>.tools.json``):
    what ``tools/list`` serves instead of the upstream's live text, and what arguments are checked
    against (``gwc.runtime.bundle.tool_definitions``).

    The input schema's validator is compiled when the bundle is read (in the loader's worker
    thread, never on a request), so a schema no node can compile refuses the whole bundle."""

    definition: dict[str, Any]  # title, description, inputSchema, outputSchema, annotations
    digest: str  # definition_digest(definition): what a live definition is compared with

    def model_post_init(self, context: Any) -> None:
        self.validator  # noqa: B018  compiled now, not on the first call

    @cached_property
    def validator(self) -> Any:
        """The compiled input schema (a ``jsonschema_rs`` validator); a cached property, as
        pydantic's private attributes cost microseconds per read."""
        return input_validator(self.definition.get("inputSchema"))


class Tool(_Frozen):
    access: Access
    mode: Mode
    approval: ApprovalSettings | None = None
    limits: LimitSettings = LimitSettings()
    timeout_ms: int
    allow: tuple[int, ...] = ()
    deny: tuple[int, ...] = ()
    sensitive: tuple[str, ...] = ()  # top-level argument names masked in what approvals store
    pinned: PinnedTool | None = None  # None: the upstream's live definition is served, unchecked

    @cached_property
    def rule_index_range(self) -> tuple[int, int]:
        """(lowest, highest) rule index it names, (0, -1) for none (a tool reused from the bundle
        before, or shared by servers, has it already: see Server.rule_index_range)."""
        indexes = (*self.allow, *self.deny)
        return (min(indexes), max(indexes)) if indexes else (0, -1)


class UpstreamAuth(_Frozen):
    """``gateway_jwt``: a short-lived token minted per call. ``static_env``: a secret from the node's env."""

    type: Literal["gateway_jwt", "static_env"]
    env: str | None = None
    header: str = "Authorization"
    scheme: str | None = "Bearer"


class Server(_Frozen):
    owner: str
    upstream: str
    description: str = ""
    source: str
    visibility: Audience = Audience()  # empty: visible to nobody
    restricted: bool = False
    tools: dict[str, Tool] = {}
    limits: ServerLimitSettings = ServerLimitSettings()
    timeout_ms: int
    max_concurrency: int
    upstream_auth: UpstreamAuth
    # what a node does with a pinned tool whose live definition drifted from its pin: hide and
    # refuse it (tool_changed), or serve the pinned definition and report the drift
    drift: Literal["refuse", "report"] = "refuse"

    @cached_property
    def rule_index_range(self) -> tuple[int, int]:
        """(lowest, highest) rule index its tools name, (0, -1) for none: checking a bundle's
        indexes is one comparison per server, none for a server reused from the bundle before."""
        ranges = [tool.rule_index_range for tool in self.tools.values() if tool.allow or tool.deny]
        return (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else (0, -1)

    def share_rule_index_range(self, other: Server) -> None:
        """Take ``other``'s range: for a server validated with ``other.tools`` as its tools (the
        same instances, in a dict of its own), when a bundle check reuses them."""
        vars(self)["rule_index_range"] = other.rule_index_range  # where cached_property keeps it


class Identity(_Frozen):
    issuer: str
    audience: tuple[str, ...]
    jwks_uri: str | None = None
    jwks: dict[str, Any] | None = None
    groups_claim: str
    algorithms: tuple[str, ...]
    leeway_s: int


class BreakGlass(_Frozen):
    group: str | None = None
    max_ttl_s: int


class ObjectLock(_Frozen):
    mode: Literal["governance", "compliance"]
    days: int


class AuditStore(_Frozen):
    """Where nodes ship closed trail files (gwc.runtime.audit.shipper)."""

    url: str  # s3://bucket[/prefix]
    object_lock: ObjectLock
    keep_local_days: int
    max_file_age_minutes: int = 60


class AuditSettings(_Frozen):
    sink: Literal["file", "stdout", "both"]
    path: str | None = None
    on_failure: Literal["closed", "open"]
    store: AuditStore | None = None


class OAuthClient(_Frozen):
    """A client pre-registered in gateway.yaml (a public client: PKCE, no secret)."""

    client_id: str
    client_name: str
    redirect_uris: tuple[str, ...]


class SignIn(_Frozen):
    """The gateway's authorization server (gwc.runtime.auth); absent: clients bring IdP tokens."""

    idp_client_id: str  # the gateway's client at the company IdP; its secret is in the node's env
    idp_scopes: tuple[str, ...]
    access_token_ttl_s: int
    refresh_token_ttl_s: int
    consent_ttl_s: int
    client_id_metadata_documents: bool
    dynamic_registration: Literal["open", "off"]
    redirect_hosts: tuple[str, ...] = ()  # non-empty: CIMD/DCR redirects only to loopback or these
    clients: tuple[OAuthClient, ...] = ()


class GatewaySettings(_Frozen):
    identity: Identity
    break_glass: BreakGlass
    default_mode: Mode
    audit: AuditSettings
    allowed_origins: tuple[str, ...] = ()  # browser origins allowed besides the gateway's own
    sign_in: SignIn | None = None
    drift_recheck_s: int = 60  # how often a node re-reads the live tools of pinned upstreams


class BundlePayload(_Frozen):
    format: Literal["gwc.bundle/v1"]
    serial: int = Field(ge=0)
    revision: str
    source_digest: str
    gateway: GatewaySettings
    servers: dict[str, Server]
    rules: tuple[Rule, ...] = ()

    @model_validator(mode="after")
    def _indexes_resolve(self) -> BundlePayload:
        n = len(self.rules)
        for name, server in self.servers.items():
            low, high = server.rule_index_range
            if low >= 0 and high < n:
                continue
            for tool_name, tool in server.tools.items():
                for idx in (*tool.allow, *tool.deny):
                    if not 0 <= idx < n:
                        raise ValueError(f"servers.{name}.tools.{tool_name}: rule index {idx} out of range")
        return self
