"""deploy/kubernetes: each overlay renders with kubectl's Kustomize, passes the Kubernetes schemas
(strict: no field they do not know), has the fleet's shape (issue 16), sets only what gwc-runtime
reads, and needs exactly the Secrets and ConfigMaps docs/operations.md tells operators to create.
tests/deploy/test_pod.py starts a node with what they render."""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from gwc.runtime.config import load, parser
from tests.deploy.kube import (
    OVERLAYS,
    by_kind,
    documented_block,
    one,
    run_documented,
    schema_errors,
    schema_versions,
)
from tests.deploy.pod import gwc_container

GWC_BIN = Path(sys.executable).parent  # this venv's gwc


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def runtime_variables() -> set[str]:
    """Every variable gwc-runtime reads: GWC_<FLAG> for each flag of its parser, and the IdP
    client secret, which has no flag."""
    flags = [a.option_strings[0] for a in parser()._actions if a.option_strings[0].startswith("--")]
    return {"GWC_" + flag[2:].upper().replace("-", "_") for flag in flags if flag != "--help"} | {
        "GWC_IDP_CLIENT_SECRET"}


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_renders_and_passes_the_kubernetes_schemas(rendered, name: str) -> None:
    objects = rendered(name)
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "NetworkPolicy", "ServiceAccount"} <= {obj["kind"] for obj in objects}
    for version in schema_versions():
        assert schema_errors(objects, version) == [], version


def test_the_schema_check_finds_mistakes(rendered) -> None:
    unknown = copy.deepcopy(one(rendered("trial"), "Deployment", "gwc"))
    gwc_container(unknown)["readinessProbe"]["httpGet"]["paht"] = "/readyz"  # a field nobody knows
    wrong_type = copy.deepcopy(one(rendered("trial"), "Deployment", "gwc"))
    gwc_container(wrong_type)["ports"][0]["containerPort"] = "8080"  # a string, not a number
    errors = schema_errors([unknown, wrong_type], schema_versions()[-1])
    assert len(errors) == 2 and "paht" in errors[0] and "containerPort" in errors[1], errors


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_fleet_of_spread_nodes_behind_a_service_a_budget_and_an_autoscaler(rendered, overlay: str) -> None:
    objects = rendered(overlay)
    deployment = one(objects, "Deployment", "gwc")
    labels = pod_labels(deployment)
    spec = deployment["spec"]
    assert "replicas" not in spec  # the autoscaler's: kubectl apply must not reset it
    assert selects(spec["selector"]["matchLabels"], labels)
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    spread = {c["topologyKey"]: c for c in spec["template"]["spec"]["topologySpreadConstraints"]}
    assert selects(spread["kubernetes.io/hostname"]["labelSelector"]["matchLabels"], labels)
    expected = "DoNotSchedule" if overlay == "production" else "ScheduleAnyway"
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == expected
    assert spread["kubernetes.io/hostname"]["maxSkew"] == 1

    hpa = one(objects, "HorizontalPodAutoscaler", "gwc")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gwc"}
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    pdb = one(objects, "PodDisruptionBudget", "gwc")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"]["maxUnavailable"] == 1

    container = gwc_container(deployment)
    assert container["resources"]["requests"]["cpu"]  # what the autoscaler's utilization is a share of
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = one(objects, "Service", "gwc")
    assert selects(service["spec"]["selector"], labels)
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
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


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_setting_is_one_gwc_runtime_reads(rendered, overlay: str, tmp_path, monkeypatch) -> None:
    deployment = one(rendered(overlay), "Deployment", "gwc")
    container = gwc_container(deployment)
    variables = [item["name"] for item in container["env"]]
    assert len(variables) == len(set(variables))
    assert {name for name in variables if name.startswith("GWC_")} <= runtime_variables()
    assert set(variables) == {name for name in variables if name.startswith("GWC_")}, "not a GWC_ setting"
    assert "args" not in container and "command" not in container  # the image's entrypoint, as is

    # every path is on a volume (the root filesystem is read-only), and the state folder on a
    # writable one
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    values = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    paths = [p for name in ("GWC_TRUST", "GWC_SIGNING_KEY", "GWC_IDP_CLIENT_SECRET_FILE", "GWC_BUNDLE",
                            "GWC_STATE_DIR") if name in values for p in values[name].split(",")
             if p.startswith("/")]
    assert len(paths) >= 4
    for path in paths:
        assert any(path == m or path.startswith(m + "/") for m in mounts), f"{path} is on no volume"
    state = mounts[values["GWC_STATE_DIR"]]
    assert "emptyDir" in volumes[state["name"]] and not state.get("readOnly")
    assert mounts["/tmp"] and "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert all(m.get("readOnly") for m in mounts.values() if "emptyDir" not in volumes[m["name"]])

    # gwc-runtime's own reading of them: paths moved under tmp_path, secrets given real values
    for name in [*variables, *(name for name in os.environ if name.startswith("GWC_"))]:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        moved = ",".join(str(tmp_path / p.lstrip("/")) if p.startswith("/") else p for p in value.split(","))
        monkeypatch.setenv(name, moved)
    secret = tmp_path / values["GWC_IDP_CLIENT_SECRET_FILE"].lstrip("/")
    secret.parent.mkdir(parents=True)
    secret.write_text("the-client-secret\n")
    monkeypatch.setenv("GWC_SESSION_KEYS", "A" * 43)
    monkeypatch.setenv("GWC_STATE", "rediss://:pw@redis.internal:6380/0")
    monkeypatch.setenv("GWC_NODE_ID", "gwc-abc")
    config = load([])
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 8080)
    assert config.audit is not None and config.audit_failure == "closed"
    assert config.idp_client_secret == "the-client-secret" and config.node_id == "gwc-abc"
    assert config.state_dir is not None and config.state_dir.is_dir()
    assert config.public_url.startswith("http")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_bundle_source_the_shared_state_and_the_audit_trail(rendered, overlay: str) -> None:
    objects = rendered(overlay)
    deployment = one(objects, "Deployment", "gwc")
    container = gwc_container(deployment)
    env = {item["name"]: item for item in container["env"]}
    assert env["GWC_AUDIT"]["value"] == "stdout"
    assert env["GWC_STATE"]["valueFrom"]["secretKeyRef"] == {"name": "gwc-state", "key": "url"}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    if overlay == "trial":
        bundle = env["GWC_BUNDLE"]["value"]
        (mount,) = [m for m in container["volumeMounts"] if bundle.startswith(m["mountPath"] + "/")]
        assert volumes[mount["name"]]["configMap"]["name"] == "gwc-bundle"
        redis = one(objects, "StatefulSet", "gwc-redis")
        service = one(objects, "Service", "gwc-redis")
        assert selects(service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])
        assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
        assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    else:
        assert env["GWC_BUNDLE"]["value"].startswith("https://")
        assert by_kind(objects, "StatefulSet") == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_nodes_reach_only_what_they_need(rendered, overlay: str) -> None:
    objects = rendered(overlay)
    labels = pod_labels(one(objects, "Deployment", "gwc"))
    port = gwc_container(one(objects, "Deployment", "gwc"))["ports"][0]
    policies = [p for p in by_kind(objects, "NetworkPolicy")
                if selects(p["spec"]["podSelector"]["matchLabels"], labels)]
    assert any(set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} for p in policies)
    ingress = [rule for p in policies for rule in p["spec"].get("ingress", [])]
    assert ingress and all(rule["ports"] == [{"port": port["name"], "protocol": "TCP"}] for rule in ingress)
    egress = [rule for p in policies for rule in p["spec"].get("egress", [])]
    assert all(rule.get("ports") and rule.get("to") for rule in egress), "an egress rule without limits"
    reached = {p["port"] for rule in egress for p in rule["ports"]}
    redis_port = 6379 if overlay == "trial" else 6380
    assert reached == {53, 443, redis_port}
    https = [rule for rule in egress if rule["ports"] == [{"port": 443, "protocol": "TCP"}]]
    assert all("169.254.0.0/16" in t["ipBlock"]["except"] for t in https[0]["to"] if "0.0.0.0/0" in str(t))
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
    namespace = one(objects, "Deployment", "gwc")["metadata"]["namespace"]
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
