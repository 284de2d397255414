"""Names on the aggregate endpoint /mcp (runtime/policy/names.py): the pattern, stability, uniqueness."""
from __future__ import annotations

import hashlib
import random
import re
import string

import pytest

from gwc.runtime.bundle.format import BundlePayload, Server
from gwc.runtime.policy.names import (
    aggregate_name,
    collisions,
    resource_uri,
    split_resource_uri,
    tool_names,
)
from tests.support.helpers import compile_root, write_registry

PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # used with fullmatch: no trailing newline slips in
TOOL_CHARS = string.ascii_letters + string.digits + "_.-"
SERVER_CHARS = string.ascii_lowercase + string.digits + "-"
LONG_SERVER = "s" + "e" * 61 + "v"  # 63 characters, the longest a server name can be
# Two servers sharing their first 53 characters and a tool on each whose SHA-256 prefixes agree.
CROSS = (("x" * 52 + "-alpha", "t1764222"), ("x" * 52 + "-beta", "t554077"))


def fits(name: str) -> bool:
    return PATTERN.fullmatch(name) is not None


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> BundlePayload:
    return compile_root(write_registry(tmp_path_factory.mktemp("naming")))


def payload(base: BundlePayload, tools: dict[str, list[str]]) -> BundlePayload:
    """``base`` with exactly these servers and tools, in this order."""
    def server(name: str, names: list[str]) -> Server:
        return Server.model_validate({
            "owner": "team-a", "upstream": f"https://{name}.internal/mcp", "source": "test",
            "timeout_ms": 1000, "max_concurrency": 4, "upstream_auth": {"type": "gateway_jwt"},
            "tools": {t: {"access": "read", "mode": "enforce", "timeout_ms": 1000} for t in names}})
    return base.model_copy(update={"servers": {s: server(s, names) for s, names in tools.items()}})


# --- aggregate_name -------------------------------------------------------------------------------

@pytest.mark.parametrize("server, tool", [
    ("s", "t"), ("search", "query_v2"), ("a-b", "UPPER-lower_9"), (LONG_SERVER[:59], "t"),
    (LONG_SERVER[:52], "t" * 10), ("s", "t" * 61),
])
def test_a_name_that_fits_is_kept_verbatim(server: str, tool: str) -> None:
    assert aggregate_name(server, tool) == f"{server}__{tool}"


@pytest.mark.parametrize("server, tool", [
    ("s", "a.b"), ("s", "x" * 62), (LONG_SERVER, "t"), (LONG_SERVER, "a.b" * 42 + "zz"),
    ("s", "." * 128), ("search", "a" * 128), (LONG_SERVER[:52], "t" * 11), (LONG_SERVER[:51], "t" * 12),
])
def test_a_name_that_does_not_fit_is_shortened_with_a_hash(server: str, tool: str) -> None:
    name = aggregate_name(server, tool)
    digest = hashlib.sha256(f"{server}/{tool}".encode()).hexdigest()[:10]
    assert fits(name)
    assert name.endswith("_" + digest)
    assert name[:-11] == re.sub(r"[^A-Za-z0-9_-]", "-", f"{server}__{tool}")[:53]


def test_every_generated_name_fits_the_pattern() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        server = "".join(rng.choices(SERVER_CHARS, k=rng.randint(1, 63)))
        tool = "".join(rng.choices(TOOL_CHARS, k=rng.randint(1, 128)))
        assert fits(aggregate_name(server, tool)), (server, tool)


@pytest.mark.parametrize("tool", [
    "x\n", "a.b\n", "tool\r\n", "é", "名前", "a b", "a/b", "", "\n", "😀" * 70, "a\x00b",
])
def test_names_from_upstreams_fit_the_pattern_whatever_they_hold(tool: str) -> None:
    # prompt names come from upstreams as they are (aggregate.py), not from the validated registry
    assert fits(aggregate_name("s", tool)), repr(aggregate_name("s", tool))


def test_names_are_deterministic() -> None:
    args = [(LONG_SERVER, "a.b" * 40), ("s", "plain"), ("s", "x.y")]
    first = [aggregate_name(*a) for a in args]
    assert [aggregate_name(*a) for a in args] == first
    # and fixed across releases: a client's configuration names tools this way
    assert aggregate_name("s", "a.b") == "s__a-b_d53e299cbd"


def test_different_tools_get_different_names() -> None:
    rng = random.Random(11)
    servers = [LONG_SERVER, LONG_SERVER[:-1] + "w", "s", "search", "a" * 52]
    tools = {"".join(rng.choices(TOOL_CHARS, k=rng.randint(1, 128))) for _ in range(4000)}
    tools |= {f"tool.{i}" for i in range(2000)} | {"x" * 127 + c for c in TOOL_CHARS}
    names: dict[str, tuple[str, str]] = {}
    for server in servers:
        for tool in tools:
            name = aggregate_name(server, tool)
            assert names.setdefault(name, (server, tool)) == (server, tool), name
    assert len(names) == len(servers) * len(tools)


def collisions_in(bundle: BundlePayload) -> list[tuple[str, tuple[str, str], tuple[str, str]]]:
    return collisions((server, tool) for server, spec in bundle.servers.items() for tool in spec.tools)


# --- tool_names and collisions ---------------------------------------------------------------

def test_tool_names_name_every_declared_tool(base: BundlePayload) -> None:
    bundle = payload(base, {"s": ["plain", "a.b"], LONG_SERVER: ["t", "u"]})
    names = tool_names(bundle)
    assert names == {("s", "plain"): "s__plain", ("s", "a.b"): aggregate_name("s", "a.b"),
                     (LONG_SERVER, "t"): aggregate_name(LONG_SERVER, "t"),
                     (LONG_SERVER, "u"): aggregate_name(LONG_SERVER, "u")}
    assert collisions_in(bundle) == []


def test_tool_names_reuse_the_last_bundles_names_and_compute_only_new_ones(base: BundlePayload) -> None:
    last = tool_names(payload(base, {"s": ["plain", "a.b"]}))
    kept = {**last, ("s", "a.b"): "as-the-last-bundle-named-it"}
    names = tool_names(payload(base, {"s": ["a.b", "new.one"]}), kept)
    assert names == {("s", "a.b"): "as-the-last-bundle-named-it",
                     ("s", "new.one"): aggregate_name("s", "new.one")}


def test_a_tool_named_like_anothers_hashed_form_collides(base: BundlePayload) -> None:
    shared = aggregate_name("s", "a.b")
    lookalike = shared[len("s__"):]
    bundle = payload(base, {"s": ["a.b", "other", lookalike]})
    assert collisions_in(bundle) == [(shared, ("s", "a.b"), ("s", lookalike))]
    assert len(set(tool_names(bundle).values())) == 2


def test_tools_of_two_servers_can_collide_by_hash_prefix(base: BundlePayload) -> None:
    (first, first_tool), (second, second_tool) = CROSS
    shared = aggregate_name(first, first_tool)
    bundle = payload(base, {first: [first_tool, "t1"], second: ["t1", second_tool]})
    assert collisions_in(bundle) == [(shared, CROSS[0], CROSS[1])]


def test_the_same_tool_name_on_two_servers_does_not_collide(base: BundlePayload) -> None:
    assert collisions_in(payload(base, {"a": ["t", "x.y"], "b": ["t", "x.y"]})) == []


# --- resource URIs --------------------------------------------------------------------------------

@pytest.mark.parametrize("uri", [
    "file:///etc/hosts", "https://example.com/a/b?c=d#e", "db://table/{id}/rows/{row}",
    "users/{user_id}", "x", "gwc://other/nested", "s3://bucket//double//slash/",
    "template://{+path}{?query*}", "urn:isbn:0451450523",
])
def test_resource_uris_round_trip(uri: str) -> None:
    wrapped = resource_uri("search", uri)
    assert wrapped == f"gwc://search/{uri}"
    assert split_resource_uri(wrapped) == ("search", uri)


@pytest.mark.parametrize("uri", [
    "file:///etc/hosts", "gwc:/search/x", "gwc://", "gwc://search", "gwc://search/", "gwc:///x",
    "GWC://search/x", "",
])
def test_other_uris_are_not_aggregate_resource_uris(uri: str) -> None:
    assert split_resource_uri(uri) is None
