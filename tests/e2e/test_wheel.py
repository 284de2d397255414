"""The distribution as a user installs it: a wheel built from the tracked files, in a fresh venv.

It must put one import root, ``gwc``, in site-packages and nothing else; hold every module of
``runtime/`` and ``compiler/`` (the package list in pyproject.toml is explicit, so a new package left
out of it would ship a broken ``gwc``); and give working ``gwc`` and ``gwc-runtime`` commands that
import the installed copy, not this checkout. Third-party dependencies come from this venv's
site-packages (a path line in the fresh venv), so the test needs no network.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.support.repo import REPO


def tracked_files() -> list[str]:
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True)
    return [name for name in listed.stdout.decode().split("\0") if name]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of a copy of the tracked files (what a fresh clone holds, nothing else)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail("the wheel test builds from the tracked files: it needs git and a clone")
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    for name in tracked_files():
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(work / "dist"), str(source)], check=True, capture_output=True)
    (built,) = (work / "dist").glob("gwc-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed (no dependencies: they come from this venv)."""
    root = tmp_path_factory.mktemp("venv") / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    python = root / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # appended after the fresh site-packages: this venv's dependencies, but not its editable gwc
    # (the .pth files of a path added this way are not processed)
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root


def test_the_wheel_has_one_import_root_and_every_module(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"gwc", f"{wheel.name.rsplit('-', 3)[0]}.dist-info"}
    shipped = {name for name in names if name.startswith("gwc/")}
    for top, package in (("runtime", "gwc/runtime"), ("compiler", "gwc/compiler")):
        for name in tracked_files():
            if name.startswith(top + "/") and name.endswith((".py", ".json", ".j2")):
                assert package + name[len(top):] in shipped, f"{name} is not in the wheel"


def run(venv: Path, command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / command), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_gwc_validates_and_builds_from_the_installed_wheel(venv: Path, example_root: Path,
                                                         signing_key, tmp_path: Path) -> None:
    private, public, _ = signing_key
    where = run(venv, "python", "-c", "import gwc.runtime, gwc.compiler; "
                "print(gwc.runtime.__file__); print(gwc.compiler.__file__)", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert all(str(venv) in line for line in where.stdout.split()), where.stdout
    validate = run(venv, "gwc", "validate", str(example_root), cwd=tmp_path)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    out = tmp_path / "out"
    build = run(venv, "gwc", "build", str(example_root), "--key", str(private), "--out", str(out),
                "--serial", "1", "--revision", "wheel-test", cwd=tmp_path)
    assert build.returncode == 0, build.stdout + build.stderr
    verify = run(venv, "gwc", "verify", str(out / "bundle.json"), "--trust", str(public), cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    schemas = run(venv, "gwc", "schema", "--out", str(tmp_path / "schemas"), cwd=tmp_path)
    assert schemas.returncode == 0, schemas.stderr
    assert sorted(p.name for p in (tmp_path / "schemas").iterdir()) == [
        "gateway.schema.json", "manifest.schema.json", "policy.schema.json"]


def test_gwc_runtime_starts_from_the_installed_wheel(venv: Path, tmp_path: Path) -> None:
    usage = run(venv, "gwc-runtime", "--help", cwd=tmp_path)
    assert usage.returncode == 0 and "--bundle" in usage.stdout, usage.stderr
    missing = run(venv, "gwc-runtime", "--bundle", str(tmp_path / "absent.json"), "--trust",
                  str(tmp_path / "absent.pub"), cwd=tmp_path)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr, missing.stderr
