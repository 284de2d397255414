"""The image and a pod without a registry or a cluster: gwc as the Dockerfile installs it
(tests/deploy/pod.py builds it in a temporary folder), started as each overlay's StatefulSet starts
it, with the Secrets and ConfigMaps docs/operations.md's commands create (the secrets as mounted
files), against a real bundle and a real Redis, on loopback. It answers /healthz and /readyz, the
image's HEALTHCHECK passes, /metrics is on its own port only, SIGTERM makes it unready while it
still serves, its audit trail is on stdout, and it writes nothing outside its volumes. In
production it also writes the trail to its claim and ships it to a real S3 API with Object Lock
(moto), with gateway.yaml's audit section as docs/operations.md shows it."""
from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import yaml

from tests.deploy.kube import OVERLAYS, documented_block, documented_yaml, nodes, one, run_documented
from tests.deploy.pod import (
    Image,
    as_pod_user,
    gwc_container,
    mount_volumes,
    pod_env,
    snapshot,
    start_pod,
)
from tests.support.e2e import free_port, wait_port
from tests.support.redis_server import redis_server_binary

pytestmark = pytest.mark.e2e


def in_image(image: Image, *command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(image.env)
    return subprocess.run([image.which(command[0], env), *command[1:]], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_the_image_holds_gwc_compiled_and_no_build_tools(image: Image, tmp_path: Path) -> None:
    (site,) = image.local("/opt/gwc").glob("lib/python*/site-packages")
    installed = {path.name.split("-")[0].lower() for path in site.iterdir()}
    assert "gwc" in installed
    assert not installed & {"pip", "setuptools", "wheel"}, installed
    # compiled at install: nothing to write at run time
    assert list((site / "gwc" / "runtime" / "__pycache__").glob("app.*.pyc"))
    assert (site / "gwc" / "runtime" / "auth" / "templates").is_dir()
    for command in ("gwc-runtime", "gwc"):
        done = in_image(image, command, "--help", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert image.which(command, image.env).startswith(str(image.local("/opt/gwc/bin")))


def write_registry(root: Path, audit: dict | None = None) -> Path:
    """A registry whose IdP and upstream are closed loopback ports: the node needs neither to be
    ready, and reaches nothing off this machine. ``audit``: gateway.yaml's audit section."""
    closed = free_port()
    (root / "registry").mkdir(parents=True)
    gateway: dict = {"identity": {"issuer": "https://idp.test.example", "audience": "gwc",
                                  "jwks_uri": f"http://127.0.0.1:{closed}/jwks.json"}}
    if audit is not None:
        gateway["audit"] = audit
    (root / "gateway.yaml").write_text(yaml.safe_dump(gateway))
    (root / "registry" / "tools.yaml").write_text(yaml.safe_dump({
        "name": "tools", "owner": "eng", "upstream": f"http://127.0.0.1:{closed}/mcp",
        "visibility": "team:eng", "tools": {"echo": {"access": "read"}}}))
    return root


@contextmanager
def serving(folder: Path) -> Iterator[int]:
    """A static HTTP server of ``folder`` on loopback (the bundle store); its port."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def redis_as_rendered(objects: list[dict], password: str, folder: Path) -> Iterator[int]:
    """redis-server with the trial StatefulSet's own arguments (its password from the Secret, its
    port and folder moved here, bound to loopback); its port."""
    (container,) = one(objects, "StatefulSet", "gwc-redis")["spec"]["template"]["spec"]["containers"]
    args = [arg.replace("$(REDIS_PASSWORD)", password) for arg in container["args"]]
    assert args[0] == "redis-server" and {"--port", "--dir", "--requirepass"} <= set(args)
    port = free_port()
    args[args.index("--port") + 1] = str(port)
    args[args.index("--dir") + 1] = str(folder)
    with open(folder / "redis.log", "wb") as log:
        proc = subprocess.Popen([redis_server_binary(), *args[1:], "--bind", "127.0.0.1"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, "redis-server with the StatefulSet's arguments")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def wait_ready(pod, port: int) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if pod.proc.poll() is not None:
            pytest.fail(f"the node exited {pod.proc.returncode}:\n{pod.stderr.read_text()[-3000:]}")
        status, body = get(port, "/readyz")
        if status == 200:
            return body
        time.sleep(0.1)
    pytest.fail(f"the node was not ready within 30 s:\n{pod.stderr.read_text()[-3000:]}")


def secret_file(env: dict[str, str], name: str) -> Path:
    """The mounted file a GWC_*_FILE variable names (under the image root)."""
    return Path(env[name])


def rewrite(path: Path, text: str) -> None:
    """Change a mounted Secret's file (mode 0440) as the test needs, keeping its mode."""
    mode = path.stat().st_mode
    path.chmod(0o600)
    path.write_text(text)
    path.chmod(mode)


def raw_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def store_url(documented_store: dict, s3) -> str:
    """The documented bucket URL with its bucket replaced by the test store's (the prefix kept)."""
    url = documented_store["url"]
    assert url.startswith("s3://")
    prefix = url[len("s3://"):].partition("/")[2]
    return f"{s3.url}/{prefix}" if prefix else s3.url


@pytest.mark.redis
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_node_starts_as_the_statefulset_starts_it(image: Image, overlay: str, tmp_path: Path,
                                                    request: pytest.FixtureRequest) -> None:
    gwc = str(image.local("/opt/gwc/bin"))
    folder = tmp_path / "operator"  # where the operator runs the documented commands
    folder.mkdir()
    keygen = in_image(image, "gwc", "keygen", "--out", "ci", cwd=folder)
    assert keygen.returncode == 0, keygen.stderr
    audit = None
    s3 = None
    if overlay == "production":
        # gateway.yaml's audit section as the docs show it, its bucket a real S3 API with Object
        # Lock on this machine (moto)
        s3 = request.getfixturevalue("s3_server")
        audit = documented_yaml("# gateway.yaml")["audit"]
        audit["store"]["url"] = store_url(audit["store"], s3)
    build = in_image(image, "gwc", "build", str(write_registry(tmp_path / "registry-repo", audit)), "--key",
                     str(folder / "ci.key"), "--out", str(folder / "store"), "--serial", "1",
                     "--revision", "k8s", cwd=folder)
    assert build.returncode == 0, build.stdout + build.stderr
    (folder / "idp-client-secret").write_text("the-client-secret\n")
    if overlay == "production":
        (folder / "redis-url").write_text(request.getfixturevalue("redis_server").url)
    documented = run_documented([documented_block("# every fleet:"),
                                 documented_block(f"# the {overlay} overlay:")], folder, Path(gwc))
    statefulset = nodes(documented.applied)
    mount_volumes(image, statefulset, documented)
    env = pod_env(image, statefulset, documented)
    ports = {p["name"]: p["containerPort"] for p in gwc_container(statefulset)["ports"]}
    assert env["GWC_LISTEN"] == f"0.0.0.0:{ports['http']}"
    assert env["GWC_METRICS_LISTEN"] == f"0.0.0.0:{ports['metrics']}"
    # the things moved: the ports, to free ones on loopback
    env["GWC_LISTEN"] = f"127.0.0.1:{(port := free_port())}"
    env["GWC_METRICS_LISTEN"] = f"127.0.0.1:{(metrics_port := free_port())}"
    # no secret in the environment: the node reads them from the mounted Secrets
    assert not {"GWC_SESSION_KEYS", "GWC_STATE", "GWC_IDP_CLIENT_SECRET"} & set(env)
    assert secret_file(env, "GWC_SESSION_KEYS_FILE").read_text().strip() == \
        documented.data("Secret", "gwc-session-keys")["session-keys"].decode().strip()
    if s3 is not None:  # what the IAM role of the service account gives a pod on EKS
        env.update(s3.env())
    mounts = [image.local(m["mountPath"]) for m in gwc_container(statefulset)["volumeMounts"]]
    if os.geteuid() == 0:  # the pod's user reads its keys and writes its volumes, nothing else
        assert as_pod_user(image, statefulset) == []
    before = snapshot(image.root, mounts)

    with contextmanager_for(overlay, documented, env, folder, tmp_path):
        pod = start_pod(image, statefulset, env, tmp_path)
        try:
            ready = wait_ready(pod, port)
            assert ready["serial"] == 1 and ready["digest"].startswith("sha256:")
            assert get(port, "/healthz") == (200, {"status": "ok"})
            check = subprocess.run(image.healthcheck, env=env, cwd=image.workdir, capture_output=True,
                                   timeout=30, executable=image.which(image.healthcheck[0], env))
            assert check.returncode == 0, check.stderr
            # the URL the node read from its Secret file, password and all
            assert redis.Redis.from_url(secret_file(env, "GWC_STATE_FILE").read_text().strip()).ping()
            # /metrics on its own port, not on the public one
            status, text = raw_get(metrics_port, "/metrics")
            assert status == 200 and "gwc_bundle_serial" in text
            assert raw_get(port, "/metrics")[0] == 404
            # SIGTERM, as the kubelet sends it: unready, still serving, for GWC_DRAIN_SECONDS
            pod.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            while get(port, "/readyz")[0] != 503 and time.monotonic() < deadline:
                time.sleep(0.05)
            status, body = get(port, "/readyz")
            assert status == 503 and body["status"].startswith("draining"), (status, body)
            assert get(port, "/healthz") == (200, {"status": "ok"})
            assert pod.proc.poll() is None
        finally:
            code = pod.stop()  # a second SIGTERM: it stops at once
        assert code == 0, pod.stderr.read_text()[-3000:]
        check = subprocess.run(image.healthcheck, env=env, cwd=image.workdir, capture_output=True,
                               timeout=30, executable=image.which(image.healthcheck[0], env))
        assert check.returncode != 0  # the check fails once the node is gone

    # the audit trail on stdout, its checkpoints signed with the key from the Secret; logs on stderr
    records = [json.loads(line) for line in pod.stdout.read_text().splitlines()]
    assert records and records[0]["type"] == "start" and records[0]["node"] == env["GWC_NODE_ID"]
    verify = in_image(image, "gwc", "audit", "verify", str(pod.stdout), "--key",
                      str(folder / "gateway.pub"), cwd=folder)
    assert verify.returncode == 0 and "signed by the gateway key" in verify.stdout, verify.stdout
    logs = [json.loads(line) for line in pod.stderr.read_text().splitlines()]
    assert any(line["msg"] == "bundle activated" and line["serial"] == 1 for line in logs)
    # it wrote nothing but its volumes: the last good bundle in the state folder
    assert snapshot(image.root, mounts) == before
    kept = Path(env["GWC_STATE_DIR"]) / "last-good-bundle.json"
    assert kept.is_file()
    if pod.as_user is not None:  # run as the pod's user: its files are that user's
        assert (kept.stat().st_uid, kept.stat().st_gid) == pod.as_user
    if s3 is None:
        return
    # production: the same records in a file on the pod's claim, shipped at shutdown to the bucket
    # under the pod's stable name, and verifying there with the gateway's key
    trail = Path(env["GWC_AUDIT"].removeprefix("both:"))
    assert trail.is_file() or list(trail.parent.glob(trail.name + ".*"))
    prefix = audit["store"]["url"][len(s3.url) + 1:]
    listed = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=f"{prefix}/{env['GWC_NODE_ID']}/")
    keys = [item["Key"] for item in listed.get("Contents", [])]
    assert any(k.endswith(".jsonl") for k in keys) and any(k.endswith(".head.json") for k in keys), keys
    bucket = subprocess.run([image.which("gwc", image.env), "audit", "verify", audit["store"]["url"],
                             "--key", str(folder / "gateway.pub")], env={**image.env, **s3.env()},
                            cwd=folder, capture_output=True, text=True, timeout=120)
    assert bucket.returncode == 0, bucket.stdout + bucket.stderr


@contextmanager
def contextmanager_for(overlay: str, documented, env: dict[str, str], folder: Path,
                       tmp_path: Path) -> Iterator[None]:
    """What the overlay's node reaches, on loopback: the trial's Redis (the StatefulSet's, with
    the documented password, where the mounted state URL names the Service) or production's bundle store
    (serving the bundle at the URL's path)."""
    if overlay == "trial":
        service = one(documented.applied, "Service", "gwc-redis")
        address = f"@{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/"
        state = secret_file(env, "GWC_STATE_FILE")  # the Secret gwc-state's url, as mounted
        url = state.read_text()
        assert address in url, url
        password = documented.data("Secret", "gwc-redis")["password"].decode()
        (tmp_path / "redis").mkdir()
        with redis_as_rendered(documented.applied, password, tmp_path / "redis") as redis_port:
            rewrite(state, url.replace(address, f"@127.0.0.1:{redis_port}/"))
            yield
        return
    url = env["GWC_BUNDLE"]
    assert url.startswith("https://")
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]
    served = tmp_path / "served"
    (served / path.lstrip("/")).parent.mkdir(parents=True)
    shutil.copy(folder / "store" / "bundle.json", served / path.lstrip("/"))
    with serving(served) as store_port:
        env["GWC_BUNDLE"] = f"http://127.0.0.1:{store_port}{path}"
        yield
