"""deploy/kubernetes: each overlay renders with kubectl's Kustomize, passes the Kubernetes schemas
(strict: no field they do not know), has the fleet's shape (issue 16: a StatefulSet of spread nodes,
the audit trail to stdout and, in production, to the object store), drains on SIGTERM within its
grace period, keeps /metrics on a port of its own that only Prometheus reaches, sets only what
gwc-runtime (and the AWS SDK) reads, reads its secrets from files, and needs exactly the Secrets and
ConfigMaps docs/operations.md tells operators to create. tests/deploy/test_pod.py starts a node
with what they render."""
from __future__ import annotations

import copy
import inspect
import ipaddress
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gwc.runtime.audit.shipper import SHUTDOWN_GRACE_S
from gwc.runtime.config import SECRET_SETTINGS, load, parser
from gwc.runtime.mcp.trail import AuditTarget
from tests.deploy.kube import (
    OVERLAYS,
    by_kind,
    documented_block,
    documented_yaml,
    nodes,
    one,
    run_documented,
    schema_errors,
    schema_versions,
)
from tests.deploy.pod import claim_templates, gwc_container

GWC_BIN = Path(sys.executable).parent  # this venv's gwc


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def runtime_variables() -> set[str]:
    """Every variable gwc-runtime reads: GWC_<FLAG> for each flag of its parser, the IdP client
    secret, which has no flag, and GWC_<NAME>_FILE for each setting it reads from a file."""
    flags = [a.option_strings[0] for a in parser()._actions if a.option_strings[0].startswith("--")]
    return {"GWC_" + flag[2:].upper().replace("-", "_") for flag in flags if flag != "--help"} | {
        "GWC_IDP_CLIENT_SECRET"} | {f"GWC_{name.upper().replace('-', '_')}_FILE" for name in SECRET_SETTINGS}


# The one variable outside GWC_* a node's manifest sets: the AWS SDK's region of the audit bucket
# (production). The SDK's credentials are never in a manifest: on EKS the IAM role of the service
# account brings AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE at admission.
AWS_VARIABLES = {"AWS_REGION"}
# How long aiohttp's run_app, which gwc-runtime calls with its default, waits for running calls
# once the node stops taking connections.
IN_FLIGHT_S = inspect.signature(web.run_app).parameters["shutdown_timeout"].default


def env_values(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_renders_and_passes_the_kubernetes_schemas(rendered, name: str) -> None:
    objects = rendered(name)
    assert {"StatefulSet", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "NetworkPolicy", "ServiceAccount"} <= {obj["kind"] for obj in objects}
    for version in schema_versions():
        assert schema_errors(objects, version) == [], version


def test_the_schema_check_finds_mistakes(rendered) -> None:
    unknown = copy.deepcopy(nodes(rendered("trial")))
    gwc_container(unknown)["readinessProbe"]["httpGet"]["paht"] = "/readyz"  # a field nobody knows
    wrong_type = copy.deepcopy(nodes(rendered("trial")))
    gwc_container(wrong_type)["ports"][0]["containerPort"] = "8080"  # a string, not a number
    errors = schema_errors([unknown, wrong_type], schema_versions()[-1])
    assert len(errors) == 2 and "paht" in errors[0] and "containerPort" in errors[1], errors


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_fleet_of_spread_nodes_behind_a_service_a_budget_and_an_autoscaler(rendered, overlay: str) -> None:
    objects = rendered(overlay)
    statefulset = nodes(objects)
    labels = pod_labels(statefulset)
    spec = statefulset["spec"]
    assert "replicas" not in spec  # the autoscaler's: kubectl apply must not reset it
    assert selects(spec["selector"]["matchLabels"], labels)
    # pods come and go together, roll one at a time, and their claims outlive them
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"] == {"type": "RollingUpdate"}
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenScaled": "Retain", "whenDeleted": "Retain"}
    governing = one(objects, "Service", spec["serviceName"])  # one DNS name per pod
    assert governing["spec"]["clusterIP"] == "None" and selects(governing["spec"]["selector"], labels)
    spread = {c["topologyKey"]: c for c in spec["template"]["spec"]["topologySpreadConstraints"]}
    assert selects(spread["kubernetes.io/hostname"]["labelSelector"]["matchLabels"], labels)
    expected = "DoNotSchedule" if overlay == "production" else "ScheduleAnyway"
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == expected
    assert spread["kubernetes.io/hostname"]["maxSkew"] == 1

    hpa = one(objects, "HorizontalPodAutoscaler", "gwc")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "gwc"}
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    pdb = one(objects, "PodDisruptionBudget", "gwc")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"]["maxUnavailable"] == 1

    container = gwc_container(statefulset)
    assert container["resources"]["requests"]["cpu"]  # what the autoscaler's utilization is a share of
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = one(objects, "Service", "gwc")
    assert selects(service["spec"]["selector"], labels)
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["GWC_LISTEN"] == f"0.0.0.0:{ports['http']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_bounded_and_locked_down(rendered, overlay: str) -> None:
    for workload in by_kind(rendered(overlay), "Deployment") + by_kind(rendered(overlay), "StatefulSet"):
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            resources = container["resources"]
            assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}


def moved(value: str, root: Path) -> str:
    """A setting with its absolute paths (alone, comma-separated, or after file:/both:) under root."""
    def one_path(piece: str) -> str:
        for prefix in ("file:", "both:", ""):
            if piece.startswith(prefix + "/"):
                return prefix + str(root / piece[len(prefix) + 1:])
        return piece
    return ",".join(one_path(piece) for piece in value.split(","))


def mount_of(container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume mount ``path`` is on, or is (the deepest one)."""
    found = [m for m in container["volumeMounts"]
             if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert found, f"{path} is on no volume"
    return max(found, key=lambda m: len(m["mountPath"]))


def file_variables() -> set[str]:
    return {f"GWC_{name.upper().replace('-', '_')}_FILE" for name in SECRET_SETTINGS}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_setting_is_one_gwc_runtime_reads(rendered, overlay: str, tmp_path, monkeypatch) -> None:
    statefulset = nodes(rendered(overlay))
    container = gwc_container(statefulset)
    variables = [item["name"] for item in container["env"]]
    assert len(variables) == len(set(variables))
    gwc = {name for name in variables if name.startswith("GWC_")}
    assert gwc <= runtime_variables(), gwc - runtime_variables()
    assert set(variables) - gwc <= AWS_VARIABLES, "not a GWC_ setting"
    assert "args" not in container and "command" not in container  # the image's entrypoint, as is

    # every secret from a file on a Secret volume the node's group can read, none in the environment
    assert not [item for item in container["env"] if "secretKeyRef" in item.get("valueFrom", {})]
    assert file_variables() <= gwc and not {name.removesuffix("_FILE") for name in file_variables()} & gwc
    pod = statefulset["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    values = env_values(container)
    for name in file_variables():
        secret = volumes[mount_of(container, values[name])["name"]]["secret"]
        assert secret["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"], name

    # every path is on a volume (the root filesystem is read-only); only the state folder, /tmp
    # and the audit trail's volume are writable
    claims = {claim["metadata"]["name"] for claim in claim_templates(statefulset)}
    paths = [p for name in ("GWC_TRUST", "GWC_SIGNING_KEY", "GWC_BUNDLE", "GWC_STATE_DIR", "GWC_AUDIT",
                            *file_variables()) if name in values
             for p in values[name].removeprefix("both:").removeprefix("file:").split(",")
             if p.startswith("/")]
    assert len(paths) >= 6
    for path in paths:
        mount_of(container, path)
    writable = {m["mountPath"] for m in container["volumeMounts"]
                if m["name"] in claims or "emptyDir" in volumes.get(m["name"], {})}
    assert all(m.get("readOnly") for m in container["volumeMounts"] if m["mountPath"] not in writable)
    state = mount_of(container, values["GWC_STATE_DIR"])
    assert "emptyDir" in volumes[state["name"]] and not state.get("readOnly")
    audit = AuditTarget.parse(values["GWC_AUDIT"])
    assert "/tmp" in writable
    assert writable <= {"/tmp", state["mountPath"]} | (
        {mount_of(container, str(audit.path))["mountPath"]} if audit.path else set())

    # gwc-runtime's own reading of them: paths moved under tmp_path, secret files with real values
    for name in [*variables, *(name for name in os.environ if name.startswith("GWC_"))]:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        if name.startswith("GWC_"):
            monkeypatch.setenv(name, moved(value, tmp_path))
    secrets = {"GWC_SESSION_KEYS_FILE": "A" * 43 + "\n", "GWC_STATE_FILE": "rediss://:pw@redis.internal:6380/0\n",
               "GWC_IDP_CLIENT_SECRET_FILE": "the-client-secret\n"}
    assert set(secrets) == file_variables()
    for name, content in secrets.items():
        path = Path(moved(values[name], tmp_path))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    monkeypatch.setenv("GWC_NODE_ID", "gwc-0")
    config = load([])
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 8080)
    assert config.audit is not None and config.audit_failure == "closed"
    assert config.idp_client_secret == "the-client-secret" and config.node_id == "gwc-0"
    assert len(config.session_keys) == 1 and config.state == "rediss://:pw@redis.internal:6380/0"
    assert config.state_dir is not None and config.state_dir.is_dir()
    assert config.public_url.startswith("http")
    assert config.drain_s > 0 and config.metrics_host == "0.0.0.0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_bundle_source_the_shared_state_and_the_audit_trail(rendered, overlay: str) -> None:
    objects = rendered(overlay)
    statefulset = nodes(objects)
    container = gwc_container(statefulset)
    pod = statefulset["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    values = env_values(container)
    state_url = volumes[mount_of(container, values["GWC_STATE_FILE"])["name"]]
    assert state_url["secret"]["secretName"] == "gwc-state"
    assert values["GWC_STATE_FILE"].endswith("/url")
    account = one(objects, "ServiceAccount", pod["serviceAccountName"])
    audit = AuditTarget.parse(values["GWC_AUDIT"])
    if overlay == "trial":
        bundle = values["GWC_BUNDLE"]
        assert volumes[mount_of(container, bundle)["name"]]["configMap"]["name"] == "gwc-bundle"
        redis = one(objects, "StatefulSet", "gwc-redis")
        service = one(objects, "Service", "gwc-redis")
        assert selects(service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])
        assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
        assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
        # the trail on stdout alone: nothing to ship, no claim, no credentials
        assert audit.sink == "stdout" and claim_templates(statefulset) == []
        assert "AWS_REGION" not in values and not account["metadata"].get("annotations")
        return
    assert values["GWC_BUNDLE"].startswith("https://")
    assert [s["metadata"]["name"] for s in by_kind(objects, "StatefulSet")] == ["gwc"]
    # the trail to stdout and to a file on the pod's own claim, which outlives the pod
    assert audit.sink == "both" and audit.path is not None
    mount = mount_of(container, str(audit.path))
    assert mount["name"] not in volumes and not mount.get("readOnly")
    (claim,) = [c for c in claim_templates(statefulset) if c["metadata"]["name"] == mount["name"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    # shipped by the node with the service account's IAM role, to the bucket of the documented
    # gateway.yaml, whose trail file is this one
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert values["AWS_REGION"]
    documented = documented_yaml("# gateway.yaml")["audit"]
    assert documented["sink"] == "both" and documented["path"] == str(audit.path)
    assert documented["store"]["url"].startswith("s3://")
    assert documented["store"]["object_lock"]["mode"] in ("compliance", "governance")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_node_drains_within_its_grace_period(rendered, overlay: str) -> None:
    """SIGTERM: the node stays up, unready, for GWC_DRAIN_SECONDS (no preStop hook: the endpoints
    forget a terminating pod while it still serves), then ships its last file for up to the
    shipper's grace and lets running calls end; the kubelet's grace period covers all three."""
    statefulset = nodes(rendered(overlay))
    container = gwc_container(statefulset)
    drain = float(env_values(container)["GWC_DRAIN_SECONDS"])
    assert "lifecycle" not in container
    readiness = container["readinessProbe"]
    assert drain > readiness["periodSeconds"] * readiness["failureThreshold"]
    grace = statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= drain + SHUTDOWN_GRACE_S + IN_FLIGHT_S, (grace, drain, SHUTDOWN_GRACE_S, IN_FLIGHT_S)


def ingress_rules(objects: list[dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    return [rule for p in by_kind(objects, "NetworkPolicy")
            if selects(p["spec"]["podSelector"]["matchLabels"], labels)
            for rule in p["spec"].get("ingress", [])]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_metrics_have_a_port_of_their_own_that_only_prometheus_reaches(rendered, overlay: str) -> None:
    objects = rendered(overlay)
    statefulset = nodes(objects)
    labels = pod_labels(statefulset)
    container = gwc_container(statefulset)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert env_values(container)["GWC_METRICS_LISTEN"] == f"0.0.0.0:{ports['metrics']}"
    assert ports["metrics"] != ports["http"]
    # no Service sends to it, so a route to a Service never reaches /metrics
    for service in by_kind(objects, "Service"):
        if selects(service["spec"]["selector"], labels):
            targets = {p["targetPort"] for p in service["spec"]["ports"]}
            assert targets.isdisjoint({"metrics", ports["metrics"]}), service["metadata"]["name"]
    annotations = statefulset["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    assert annotations["prometheus.io/path"] == "/metrics"
    # the NetworkPolicies admit it from Prometheus' namespace alone
    rules = ingress_rules(objects, labels)
    assert all(rule.get("ports") for rule in rules), "an ingress rule for every port"
    scrape = [rule for rule in rules if {p["port"] for p in rule["ports"]} & {"metrics", ports["metrics"]}]
    assert scrape
    for rule in scrape:
        assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
        assert rule.get("from") and all(set(peer) == {"namespaceSelector"} for peer in rule["from"])
        assert all(peer["namespaceSelector"].get("matchLabels") for peer in rule["from"])


def admits(rules: list[dict[str, Any]], address: str, port: int) -> bool:
    """Whether egress ``rules`` let a pod open ``address:port`` (ipBlock peers only)."""
    ip = ipaddress.ip_address(address)
    for rule in rules:
        if not any(p["port"] == port for p in rule["ports"]):
            continue
        for peer in rule["to"]:
            block = peer.get("ipBlock")
            if block and ip in ipaddress.ip_network(block["cidr"]) and not any(
                    ip in ipaddress.ip_network(e) for e in block.get("except", [])
                    if ipaddress.ip_network(e).version == ip.version):
                return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_nodes_reach_only_what_they_need(rendered, overlay: str) -> None:
    objects = rendered(overlay)
    statefulset = nodes(objects)
    labels = pod_labels(statefulset)
    policies = [p for p in by_kind(objects, "NetworkPolicy")
                if selects(p["spec"]["podSelector"]["matchLabels"], labels)]
    assert any(set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} for p in policies)
    # from anywhere (the ingress controller): the node's public port alone
    ingress = ingress_rules(objects, labels)
    open_rules = [rule for rule in ingress if not rule.get("from")]
    assert open_rules and all(rule["ports"] == [{"port": "http", "protocol": "TCP"}] for rule in open_rules)
    assert {p["port"] for rule in ingress for p in rule["ports"]} == {"http", "metrics"}
    egress = [rule for p in policies for rule in p["spec"].get("egress", [])]
    assert all(rule.get("ports") and rule.get("to") for rule in egress), "an egress rule without limits"
    reached = {p["port"] for rule in egress for p in rule["ports"]}
    redis_port = 6379 if overlay == "trial" else 6380
    assert reached == {53, 443, redis_port}
    # HTTPS to the S3 endpoint and STS (public addresses of the provider), never to the metadata service
    assert admits(egress, "52.217.0.1", 443) and admits(egress, "2600:1fa0::1", 443)  # s3.amazonaws.com
    assert not admits(egress, "169.254.169.254", 443) and not admits(egress, "fd00:ec2::254", 443)
    assert not admits(egress, "52.217.0.1", 80)
    if overlay == "trial":  # Redis takes connections from the nodes alone, and makes none
        redis = one(objects, "NetworkPolicy", "gwc-redis")
        assert redis["spec"]["egress"] == [] and set(redis["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        (rule,) = redis["spec"]["ingress"]
        assert selects(rule["from"][0]["podSelector"]["matchLabels"], labels)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_documented_commands_create_what_the_overlay_needs(rendered, overlay: str, tmp_path) -> None:
    """docs/operations.md's commands, run with kubectl in dry-run, create every Secret and
    ConfigMap the overlay's pods read, with the keys they read, in the overlay's namespace; and
    its `kubectl apply -k` applies the overlay."""
    (tmp_path / "ci.pub").write_text("(the CI public key)\n")
    (tmp_path / "idp-client-secret").write_text("(the IdP client secret)\n")
    (tmp_path / "redis-url").write_text("rediss://:pw@redis.internal:6380/0")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "bundle.json").write_text("{}")
    documented = run_documented([documented_block("# every fleet:"),
                                 documented_block(f"# the {overlay} overlay:")], tmp_path, GWC_BIN)
    objects = rendered(overlay)
    assert documented.applied == objects
    namespace = nodes(objects)["metadata"]["namespace"]
    created = {(o["kind"], o["metadata"]["name"]): o for o in documented.objects}
    assert created.pop(("Namespace", namespace))
    assert {o["metadata"].get("namespace") for o in created.values()} == {namespace}
    needed: set[tuple[str, str, str]] = set()  # (kind, name, key); key "*": any
    for workload in by_kind(objects, "Deployment") + by_kind(objects, "StatefulSet"):
        pod = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            paths = [p for item in container.get("env", []) for p in item.get("value", "").split(",")]
            for item in container.get("env", []):
                if ref := item.get("valueFrom", {}).get("secretKeyRef"):
                    needed.add(("Secret", ref["name"], ref["key"]))
            for mount in container.get("volumeMounts", []):
                volume = volumes.get(mount["name"], {})  # none: a volume claim
                if "secret" in volume:
                    kind, name = "Secret", volume["secret"]["secretName"]
                elif "configMap" in volume:
                    kind, name = "ConfigMap", volume["configMap"]["name"]
                else:
                    continue
                # the files the node opens under this mount are keys of its Secret or ConfigMap
                folder = mount["mountPath"] + "/"
                keys = [p[len(folder):] for p in paths if p.startswith(folder)]
                needed |= {(kind, name, key) for key in keys or ["*"]}
    for kind, name, key in sorted(needed):
        assert (kind, name) in created, f"docs/operations.md does not create {kind} {name}"
        assert key == "*" or key in created[(kind, name)]["data"], f"{kind} {name} lacks {key}"
    referenced = {(kind, name) for kind, name, _ in needed}
    assert set(created) == referenced, "created but never read"
