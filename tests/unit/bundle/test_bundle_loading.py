"""Bundle distribution on a runtime node: fetch (file, HTTP with ETag), verify, refuse, persist, swap."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from aiohttp import web

from gwc.compiler.build.bundle import build
from gwc.compiler.build.keys import generate_keypair
from gwc.compiler.build.registry import load_registry
from gwc.runtime.bundle.poller import MAX_BACKOFF_S, BundlePoller
from gwc.runtime.bundle.read import trusted_keys
from gwc.runtime.bundle.source import FileSource, HttpSource
from gwc.runtime.bundle.store import BundleStore
from gwc.runtime.metrics import Metrics


@pytest.fixture
def make_bundle(example_root: Path, signing_key, tmp_path: Path):
    """bytes of the example registry's bundle at a serial, signed by the CI key (or another)."""
    registry = load_registry(example_root)

    def make(serial: int, revision: str = "r", key=None, encoding: str = "lines") -> bytes:
        out = tmp_path / f"out-{serial}-{revision}-{encoding}"
        return build(registry, key or signing_key[2], out, serial, revision, encoding).envelope
    return make


def node(signing_key, state_dir: Path | None = None, source=None, interval: float = 30.0):
    store = BundleStore(trusted_keys([str(signing_key[1])]), state_dir)
    metrics = Metrics()
    return store, metrics, BundlePoller(source, store, metrics, interval)


def file_node(signing_key, tmp_path: Path, data: bytes):
    """A node with a state dir, polling a bundle file that holds ``data``: (state dir, bundle
    file, store, metrics, poller)."""
    path = tmp_path / "bundle.json"
    path.write_bytes(data)
    return (tmp_path / "state", path, *node(signing_key, tmp_path / "state", FileSource(path)))


def loads(metrics: Metrics, result: str) -> float:
    return metrics.registry.get_sample_value("gwc_bundle_loads_total", {"result": result}) or 0.0


async def test_file_source_activates_then_only_newer_serials(make_bundle, signing_key, tmp_path):
    path = tmp_path / "store" / "bundle.json"
    path.parent.mkdir()
    path.write_bytes(make_bundle(10))
    store, metrics, poller = node(signing_key, source=FileSource(path))
    assert await poller.poll_once() == "activated"
    assert store.active.serial == 10
    assert await poller.poll_once() == "unchanged"  # same ETag: not even read

    path.write_bytes(make_bundle(11))
    assert await poller.poll_once() == "activated" and store.active.serial == 11
    assert metrics.registry.get_sample_value("gwc_bundle_serial") == 11

    path.write_bytes(make_bundle(9))
    assert await poller.poll_once() == "refused"
    assert store.active.serial == 11
    path.write_bytes(make_bundle(11, revision="other"))
    assert await poller.poll_once() == "refused"  # same serial, different content
    assert store.active.serial == 11 and loads(metrics, "refused") == 2


def _tampered(data: bytes) -> bytes:
    env = json.loads(data)
    env["payload"] = env["payload"][:-8] + ("A" * 8 if not env["payload"].endswith("A" * 8) else "B" * 8)
    return json.dumps(env).encode()


@pytest.mark.parametrize("spoil", [
    pytest.param(lambda data, other: _tampered(data), id="bad-signature"),
    pytest.param(lambda data, other: data[: len(data) // 2], id="truncated"),
    pytest.param(lambda data, other: other, id="unknown-key"),
    pytest.param(lambda data, other: b"", id="empty"),
])
async def test_bad_bundles_are_refused_and_the_last_good_keeps_serving(
        make_bundle, signing_key, tmp_path, spoil):
    path = tmp_path / "bundle.json"
    path.write_bytes(make_bundle(1))
    store, _metrics, poller = node(signing_key, source=FileSource(path))
    await poller.start()
    good = store.active
    stranger = generate_keypair(tmp_path / "stranger")[2]
    path.write_bytes(spoil(make_bundle(2), make_bundle(2, key=stranger)))
    assert await poller.poll_once() == "refused"
    assert store.active is good


async def test_http_source_uses_etags(make_bundle, signing_key, aiohttp_server):
    state = {"body": make_bundle(5), "full": 0, "not_modified": 0}

    async def serve(request: web.Request) -> web.Response:
        etag = f'"{hash(state["body"]) & 0xffffffff:x}"'
        if request.headers.get("If-None-Match") == etag:
            state["not_modified"] += 1
            return web.Response(status=304)
        state["full"] += 1
        return web.Response(body=state["body"], headers={"ETag": etag})

    app = web.Application()
    app.router.add_get("/bundle.json", serve)
    server = await aiohttp_server(app, host="127.0.0.1")
    source = HttpSource(str(server.make_url("/bundle.json")))
    store, _metrics, poller = node(signing_key, source=source)
    try:
        assert await poller.poll_once() == "activated"
        assert await poller.poll_once() == "unchanged"
        state["body"] = make_bundle(6)
        assert await poller.poll_once() == "activated" and store.active.serial == 6
        assert (state["full"], state["not_modified"]) == (2, 1)
    finally:
        await source.close()


async def test_http_errors_are_fetch_errors_with_backoff(signing_key, aiohttp_server):
    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/bundle.json", unavailable)
    server = await aiohttp_server(app, host="127.0.0.1")
    source = HttpSource(str(server.make_url("/bundle.json")))
    store, metrics, poller = node(signing_key, source=source, interval=30)
    try:
        delays = []
        for _ in range(4):
            assert await poller.poll_once() == "fetch_error"
            delays.append(poller.next_delay())
        assert store.active is None
        assert 1.0 <= delays[0] <= 2.0 and 8.0 <= delays[3] <= 16.0  # 2^n with jitter in [0.5, 1]
        assert loads(metrics, "fetch_error") == 4
    finally:
        await source.close()


def test_interval_has_jitter_and_backoff_is_capped(signing_key):
    _, _, poller = node(signing_key, source=None, interval=30)
    delays = {poller.next_delay() for _ in range(50)}
    assert all(24.0 <= d <= 36.0 for d in delays) and len(delays) > 1
    poller._failures = 50
    assert poller.next_delay() <= MAX_BACKOFF_S


async def test_restart_with_the_source_down_starts_from_the_persisted_bundle(
        make_bundle, signing_key, tmp_path):
    state_dir, path, first, _, poller = file_node(signing_key, tmp_path, make_bundle(7))
    await poller.start()
    assert first.active.serial == 7

    path.unlink()  # the store is down when the node restarts
    second, metrics, poller = node(signing_key, state_dir, FileSource(path))
    await poller.start()
    assert second.active is not None and second.active.digest == first.active.digest
    assert loads(metrics, "fetch_error") == 1


async def test_a_persisted_bundle_of_the_one_document_encoding_still_starts_a_node(
        make_bundle, signing_key, tmp_path):
    """A node upgraded past issue 15 finds a bundle of the old encoding in its state dir: it
    serves it, keeps its serial as the rollback floor, and takes newer bundles in lines."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "last-good-bundle.json").write_bytes(make_bundle(7, encoding="json"))
    path = tmp_path / "bundle.json"
    path.write_bytes(make_bundle(6))
    store, metrics, poller = node(signing_key, state_dir, FileSource(path))
    await poller.start()
    assert store.active.serial == 7 and loads(metrics, "refused") == 1  # 6 < 7, lines or not
    path.write_bytes(make_bundle(8))
    assert await poller.poll_once() == "activated" and store.active.serial == 8
    assert json.loads((state_dir / "last-good-bundle.json").read_bytes())["payloadType"] \
        == "application/vnd.gwc.bundle+jsonl"


async def test_the_copy_written_during_a_check_is_kept_only_for_an_accepted_bundle(
        make_bundle, signing_key, tmp_path):
    state_dir, path, _, _, poller = file_node(signing_key, tmp_path, make_bundle(5))
    assert await poller.poll_once() == "activated"
    assert [f.name for f in state_dir.iterdir()] == ["last-good-bundle.json"]
    for i, (data, result) in enumerate(((make_bundle(4), "refused"),
                                        (_tampered(make_bundle(6)), "refused"),
                                        (make_bundle(5), "unchanged")), start=1):
        path.write_bytes(data)
        os.utime(path, ns=(i, i * 10**9))  # a new ETag every time
        assert await poller.poll_once() == result
        assert [f.name for f in state_dir.iterdir()] == ["last-good-bundle.json"]
        assert (state_dir / "last-good-bundle.json").read_bytes() == make_bundle(5)
    path.write_bytes(make_bundle(6))
    assert await poller.poll_once() == "activated"
    assert (state_dir / "last-good-bundle.json").read_bytes() == make_bundle(6)
    assert [f.name for f in state_dir.iterdir()] == ["last-good-bundle.json"]


async def test_tampered_persisted_bundle_is_not_used(make_bundle, signing_key, tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "last-good-bundle.json").write_bytes(_tampered(make_bundle(3)))
    store, _, poller = node(signing_key, state_dir, FileSource(tmp_path / "missing.json"))
    await poller.start()
    assert store.active is None


async def test_no_source_and_nothing_persisted_means_no_bundle(signing_key, tmp_path):
    store, _, poller = node(signing_key, tmp_path / "state", FileSource(tmp_path / "missing.json"))
    await poller.start()
    assert store.active is None


async def test_restart_keeps_rollback_protection(make_bundle, signing_key, tmp_path):
    state_dir = tmp_path / "state"
    path = tmp_path / "bundle.json"
    path.write_bytes(make_bundle(102))
    _first, _, poller = node(signing_key, state_dir, FileSource(path))
    await poller.start()
    path.write_bytes(make_bundle(100))  # the store now serves an older bundle
    second, metrics, poller = node(signing_key, state_dir, FileSource(path))
    await poller.start()
    assert second.active.serial == 102 and loads(metrics, "refused") == 1
    assert (state_dir / "last-good-bundle.json").read_bytes() == make_bundle(102)
