"""The Dockerfile, checked where no registry of base images can be reached (and so no image can be
built): hadolint, the shape issue 16 asks for, and the build context it gets.
tests/deploy/pod.py does what its stages do."""
from __future__ import annotations

import subprocess

from tests.deploy.kube import (
    DOCKERFILE,
    build_context,
    dockerfile_stages,
    dockerignore_excludes,
    hadolint,
    nodes,
)
from tests.deploy.pod import gwc_container


def lint(path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def test_hadolint_passes() -> None:
    done = lint(DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_refuses_what_it_should(tmp_path) -> None:
    """The linter really runs: a `latest` base, apt-get without pinned versions."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y gcc\n")
    done = lint(bad)
    assert done.returncode != 0
    assert "DL3007" in done.stdout and "DL3008" in done.stdout, done.stdout


def test_two_stages_and_the_final_one_only_copies_the_virtualenv() -> None:
    build, final = dockerfile_stages()
    assert build.name == "build" and final.base == build.base == "${PYTHON_IMAGE}"
    assert final.all("COPY") == ["--from=build /opt/gwc /opt/gwc"]
    for run in final.all("RUN"):  # making its user and folder; no package manager, no compiler
        for tool in ("apt", "apk", "pip", "gcc", "cc ", "make", "curl", "wget"):
            assert tool not in run, f"the final stage runs {tool}: {run}"
    installs = " ".join(build.all("RUN"))
    assert "venv --without-pip /opt/gwc" in installs and "--python /opt/gwc/bin/python" in installs


def test_the_image_runs_gwc_runtime_as_the_user_the_statefulset_names(rendered) -> None:
    final = dockerfile_stages()[-1]
    uid, gid = (int(part) for part in final.all("USER")[-1].split(":"))
    assert uid != 0 and gid != 0
    assert final.exec_form("ENTRYPOINT") == ["gwc-runtime"]
    assert final.env()["PATH"].startswith("/opt/gwc/bin:")
    healthcheck = final.all("HEALTHCHECK")[0]
    assert "/healthz" in healthcheck and " CMD [" in healthcheck
    statefulset = nodes(rendered("base"))
    pod = statefulset["spec"]["template"]["spec"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
    # the port it exposes and listens on is the container's public one (`http`; /metrics has its
    # own); its WORKDIR is the state folder, which the StatefulSet mounts writable
    (port,) = [p for p in gwc_container(statefulset)["ports"] if p["name"] == "http"]
    assert final.all("EXPOSE") == [str(port["containerPort"])]
    assert final.env()["GWC_LISTEN"].rpartition(":")[2] == str(port["containerPort"])
    env = {item["name"]: item.get("value") for item in gwc_container(statefulset)["env"]}
    assert final.all("WORKDIR")[-1] == final.env()["GWC_STATE_DIR"] == env["GWC_STATE_DIR"]


def test_the_build_context_is_what_the_build_stage_copies() -> None:
    context = set(build_context())
    copied = [item for args in dockerfile_stages()[0].all("COPY") for item in args.split()[:-1]]
    for item in copied:
        assert item in context or any(name.startswith(item + "/") for name in context), item
    # and nothing else: no tests, no example registry, no keys, no .git, no caches
    unused = sorted(name for name in context
                    if not any(name == item or name.startswith(item + "/") for item in copied))
    assert unused == []
    assert not any("__pycache__" in name or name.endswith(".key") for name in context)


def test_the_dockerignore_reading_follows_docker() -> None:
    """The matcher the tests read .dockerignore with: last match wins, a folder covers its
    contents, ``**`` crosses folders."""
    patterns = ["*", "!runtime/", "**/__pycache__", "!README.md"]
    assert dockerignore_excludes(patterns, "tests/test_x.py")
    assert dockerignore_excludes(patterns, ".git/config")
    assert not dockerignore_excludes(patterns, "runtime/app.py")
    assert not dockerignore_excludes(patterns, "README.md")
    assert dockerignore_excludes(patterns, "runtime/mcp/__pycache__/a.pyc")
