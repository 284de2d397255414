"""The image and a pod, without a registry or a cluster.

``build_image`` does in a temporary folder what the Dockerfile's stages do: the build context is the
tracked files less what .dockerignore leaves out; the build stage's COPY lines put them in a source
folder; the wheel is built from it and installed, with bytecode compiled, into a virtualenv made
``--without-pip`` at the final stage's path (``/opt/gwc`` under a folder standing for the image's
root). Two differences, both for want of a network: the wheel is built without build isolation (with
this venv's setuptools), and the third-party dependencies are not installed from PyPI but reached
through a path line to this venv's site-packages (as tests/e2e/test_wheel.py does).

``start_pod`` starts that image's entrypoint as the rendered StatefulSet would: the image's ENV, then
the container's env (Secrets and ConfigMaps as the documented commands created them), each volume
mounted under the image root with its files, modes and the pod's group (a claim of the
StatefulSet's volumeClaimTemplates as an empty writable folder, as a new volume is), the image's
WORKDIR as the working folder, and the pod's user and groups when the tests run as root and that
user can reach this Python and its site-packages (not where Python lives under /root, as on this project's
machines: the node then runs as the tests' user, and the pod's modes go unchecked there).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.deploy.kube import (
    Documented,
    build_context,
    dockerfile_stages,
    one,
)
from tests.support.repo import REPO

# What a Debian-based python image has on its PATH before the Dockerfile's ENV.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
POD_NAME = "gwc-0"  # a StatefulSet's first pod


@dataclass
class Image:
    root: Path  # stands for the image's /
    env: dict[str, str]  # the final stage's ENV, its paths under root
    entrypoint: list[str]
    healthcheck: list[str]
    workdir: Path
    user: tuple[int, int]

    def local(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def which(self, command: str, env: dict[str, str]) -> str:
        found = shutil.which(command, path=env["PATH"])
        assert found, f"{command} is not on the image's PATH ({env['PATH']})"
        return found


def _copy_context(source: Path) -> None:
    """The build stage's COPY lines, from the context .dockerignore leaves, into ``source`` (its
    WORKDIR): a file goes to the destination (into it when it ends with /), a folder's contents
    into the destination."""
    build = dockerfile_stages()[0]
    context = build_context()
    for args in build.all("COPY"):
        *sources, destination = args.split()
        target = source / destination
        for item in sources:
            if item in context:
                copies = [(item, target / Path(item).name if destination.endswith("/") else target)]
            else:
                copies = [(name, target / Path(name).relative_to(item)) for name in context
                          if name.startswith(item.rstrip("/") + "/")]
            assert copies, f"COPY {item}: not in the build context (.dockerignore leaves it out?)"
            for name, where in copies:
                where.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, where)


def build_image(work: Path) -> Image:
    final = dockerfile_stages()[-1]
    root = work / "image"
    venv = root / "opt" / "gwc"
    source = work / "src"
    _copy_context(source)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(work / "wheels"), str(source)], check=True, capture_output=True)
    (wheel,) = (work / "wheels").glob("gwc-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                    "--quiet", "--no-deps", "--no-index", "--compile", str(wheel)],
                   check=True, capture_output=True)
    site = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # after the image's own site-packages: this venv's dependencies, not its editable gwc (the .pth
    # files of a path added this way are not processed)
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    uid, gid = final.all("USER")[-1].split(":")
    image = Image(root=root, env={}, entrypoint=final.exec_form("ENTRYPOINT"),
                  healthcheck=json.loads(final.all("HEALTHCHECK")[0].split(" CMD ", 1)[1]),
                  workdir=root / final.all("WORKDIR")[-1].lstrip("/"), user=(int(uid), int(gid)))
    image.env = {key: image_value(image, key, value) for key, value in final.env().items()}
    return image


def image_value(image: Image, key: str, value: str) -> str:
    """A setting as the node sees it in the image: absolute paths (alone, in a comma-separated
    list, or after ``file:``/``both:``) are under the image's root. PATH is a colon-separated list
    whose ``$PATH`` is the base image's."""
    if key == "PATH":
        pieces = value.replace("$PATH", BASE_PATH).split(":")
        return ":".join(p if p in BASE_PATH.split(":") else str(image.local(p)) for p in pieces)

    def one_path(piece: str) -> str:
        for prefix in ("file:", "both:", ""):
            if piece.startswith(prefix + "/"):
                return prefix + str(image.local(piece[len(prefix):]))
        return piece

    return ",".join(one_path(piece) for piece in value.split(","))


def world_readable(path: Path) -> bool:
    """Whether a user outside the owner and group can read ``path`` and reach it."""
    for part in [path, *path.parents]:
        mode = part.stat().st_mode
        if not mode & stat.S_IXOTH or (part == path and not mode & stat.S_IROTH):
            return False
    return True


@contextmanager
def image_folder() -> Iterator[Path]:
    """A temporary folder others can reach (the pod's user reads the image from it)."""
    folder = Path(tempfile.mkdtemp(prefix="gwc-image-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Pod:
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    as_user: tuple[int, int] | None  # the uid and gid it runs as, when the tests could switch

    def stop(self) -> int:
        """SIGTERM, as the kubelet stops a container; its exit code (SIGKILL after 15 s)."""
        self.proc.terminate()  # nothing when it has exited
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def gwc_container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == "gwc"]
    return container


def claim_templates(workload: dict[str, Any]) -> list[dict[str, Any]]:
    """A StatefulSet's volume claims, one per pod, mounted by name like volumes."""
    return list(workload["spec"].get("volumeClaimTemplates", []))


def writable_volumes(workload: dict[str, Any]) -> set[str]:
    """The names of the volumes the node may write: emptyDirs and claims."""
    pod = workload["spec"]["template"]["spec"]
    return {v["name"] for v in pod["volumes"] if "emptyDir" in v} | {
        c["metadata"]["name"] for c in claim_templates(workload)}


def mount_volumes(image: Image, workload: dict[str, Any], documented: Documented) -> None:
    """Each volume of the gwc container at its mount path under the image root, as the kubelet
    makes it: ConfigMap and Secret keys as files (defaultMode, group = fsGroup), an emptyDir or a
    new claim writable."""
    pod = workload["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    fs_group = pod["securityContext"].get("fsGroup")
    for mount in gwc_container(workload)["volumeMounts"]:
        where = image.local(mount["mountPath"])
        if where.exists():
            shutil.rmtree(where)
        where.mkdir(parents=True)
        if mount["name"] in writable_volumes(workload):
            where.chmod(0o777)  # as the kubelet makes an emptyDir (a claim: owned by fsGroup)
            continue
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            spec = volume["configMap"]
            files = documented.data("ConfigMap", spec["name"])
        else:
            spec = volume["secret"]
            files = documented.data("Secret", spec["secretName"])
        for key, content in files.items():
            (where / key).write_bytes(content)
            (where / key).chmod(spec.get("defaultMode", 0o644))
            if fs_group is not None and os.geteuid() == 0:
                os.chown(where / key, 0, fs_group)
        where.chmod(0o755)


def pod_env(image: Image, workload: dict[str, Any], documented: Documented) -> dict[str, str]:
    env = dict(image.env)
    for item in gwc_container(workload).get("env", []):
        if "value" in item:
            env[item["name"]] = image_value(image, item["name"], item["value"])
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name", source
            env[item["name"]] = POD_NAME
        else:
            kind, ref = ("Secret", source["secretKeyRef"]) if "secretKeyRef" in source \
                else ("ConfigMap", source["configMapKeyRef"])
            env[item["name"]] = documented.data(kind, ref["name"])[ref["key"]].decode()
    return env


def start_pod(image: Image, workload: dict[str, Any], env: dict[str, str], folder: Path) -> Pod:
    """The image's entrypoint with ``env``, from its WORKDIR; as the pod's user when possible."""
    pod = workload["spec"]["template"]["spec"]
    security = pod["securityContext"]
    command = [image.which(image.entrypoint[0], env), *image.entrypoint[1:],
               *gwc_container(workload).get("args", [])]
    user: dict[str, Any] = {}
    as_user = None
    reachable = [image.local("/opt/gwc/bin/python").resolve(), Path(sysconfig.get_paths()["purelib"])]
    if os.geteuid() == 0 and all(world_readable(path) for path in reachable):
        as_user = (security["runAsUser"], security["runAsGroup"])
        user = {"user": as_user[0], "group": as_user[1], "extra_groups": [security["fsGroup"]]}
    stdout, stderr = folder / "stdout", folder / "stderr"
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen(command, env=env, cwd=image.workdir, stdout=out, stderr=err, **user)
    return Pod(env=env, proc=proc, stdout=stdout, stderr=stderr, as_user=as_user)


def snapshot(root: Path, skip: list[Path]) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` but the ``skip`` folders: its size and modification time."""
    files = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if Path(folder, d) not in skip]
        for name in names:
            info = os.lstat(Path(folder, name))
            files[str(Path(folder, name).relative_to(root))] = (info.st_size, info.st_mtime_ns)
    return files


def secret_text(documented: Documented, name: str, key: str) -> str:
    return base64.b64decode(one(documented.objects, "Secret", name)["data"][key]).decode()



def as_pod_user(image: Image, workload: dict[str, Any]) -> list[str]:
    """What the pod's user (its uid, gid and fsGroup; the tests must run as root to switch) cannot
    do that the node needs: read every file of its Secret and ConfigMap volumes, write in its
    emptyDir and claim volumes; and what it can do that it should not: write in the image outside them."""
    pod = workload["spec"]["template"]["spec"]
    security = pod["securityContext"]
    script = []
    for mount in gwc_container(workload)["volumeMounts"]:
        where = image.local(mount["mountPath"])
        if mount["name"] in writable_volumes(workload):
            script.append(f"touch '{where}/probe' && rm '{where}/probe' || echo 'cannot write {where}'")
        else:
            script += [f"cat '{path}' > /dev/null || echo 'cannot read {path}'" for path in where.iterdir()]
    for folder in (image.root, image.local("/opt/gwc"), image.local("/opt/gwc/bin")):
        script.append(f"touch '{folder}/probe' 2>/dev/null && echo 'can write {folder}'")
    done = subprocess.run(["/bin/sh", "-c", "\n".join(script) + "\ntrue"], capture_output=True,
                          text=True, timeout=30, user=security["runAsUser"], group=security["runAsGroup"],
                          extra_groups=[security["fsGroup"]])
    return done.stdout.splitlines()
