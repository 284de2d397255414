"""Time `gwc validate` and `gwc build` on a large generated registry (the CI step of a big company).

Generates 2,000 servers x 20 tools and 10,000 policy rules (default sizes), then runs the real CLI
several times and prints the median wall time of each command, with the bundle size.

    python bench/compile.py [--servers 2000] [--tools 20] [--rules 10000] [--runs 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

TEAMS = 50


def _manifest(i: int, tools: int) -> dict:
    owner = f"team-{i % TEAMS}"
    tool_specs = {}
    for t in range(tools):
        if t % 2:
            tool_specs[f"write_{t}"] = {"access": "write", "approval": "required" if t % 4 == 1
                                        else "none", "limits": {"per_user_rpm": 30}}
        else:
            tool_specs[f"read_{t}"] = {"access": "read"}
    return {"name": f"server-{i:04d}", "owner": owner, "description": f"Generated server {i}",
            "upstream": f"https://server-{i:04d}.internal/mcp",
            "visibility": [f"team:{owner}", f"group:readers-{i % 7}", "group:engineering"],
            "tools": tool_specs, "limits": {"per_user_rpm": 120},
            "mode": {"read": "enforce", "write": "shadow" if i % 10 == 0 else "enforce"}}


def _rules(i: int, count: int, tools: int) -> list[dict]:
    server, owner = f"server-{i:04d}", f"team-{i % TEAMS}"
    rules = [{"id": f"{server}-owner", "subject": {"team": owner}, "resource": {"server": server},
              "action": "*"}]
    for r in range(1, count):
        kind = r % 4
        if kind == 0:
            rules.append({"id": f"{server}-deny-{r}", "subject": {"group": f"contractors-{r}"},
                          "resource": {"server": server}, "action": "write", "effect": "deny"})
        elif kind == 1:
            rules.append({"id": f"{server}-read-{r}", "subject": {"group": f"readers-{(i + r) % 7}"},
                          "resource": {"server": server, "tool": [f"read_{2 * (r % (tools // 2))}"]},
                          "action": "read",
                          "conditions": {"schema": ["public", "analytics"],
                                         "rate_limit_per_minute": 60}})
        else:
            rules.append({"id": f"{server}-eng-{r}", "subject": {"user": f"user-{r}@acme.example"},
                          "resource": {"server": server,
                                       "tool": [f"write_{2 * (r % (tools // 2)) + 1}"]},
                          "action": "write", "conditions": {"env": {"in": ["staging"]},
                                                            "count": {"max": 100}}})
    return rules


def generate(root: Path, servers: int, tools: int, rules: int) -> None:
    (root / "registry").mkdir(parents=True)
    (root / "gateway.yaml").write_text(yaml.safe_dump({
        "identity": {"issuer": "https://login.acme.example", "audience": "gwc",
                     "jwks_uri": "https://login.acme.example/jwks.json"},
        "owners": ["platform"]}))
    per_server = rules // servers
    for i in range(servers):
        manifest = _manifest(i, tools)
        target = root / "registry" / f"{manifest['name']}.yaml"
        if i % 2:  # half JSON, half YAML, as real registries mix both
            target = target.with_suffix(".json")
            target.write_text(json.dumps(manifest, indent=2))
        else:
            target.write_text(yaml.safe_dump(manifest, sort_keys=False))
        folder = root / "policies" / manifest["owner"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{manifest['name']}.yaml").write_text(
            yaml.safe_dump(_rules(i, per_server, tools), sort_keys=False))


def timed_run(cmd: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Wall seconds of one run of ``cmd``; a failing command stops the benchmark (it timed
    nothing)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=2000)
    parser.add_argument("--tools", type=int, default=20)
    parser.add_argument("--rules", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    gwc = str(Path(sys.executable).parent / "gwc")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "registry-repo"
        start = time.perf_counter()
        generate(root, args.servers, args.tools, args.rules)
        print(f"generated {args.servers} servers x {args.tools} tools, {args.rules} rules "
              f"in {time.perf_counter() - start:.1f} s")
        subprocess.run([gwc, "keygen", "--out", f"{tmp}/k"], check=True, capture_output=True)
        env_cmds = {
            "validate": [gwc, "validate", str(root)],
            "build": [gwc, "build", str(root), "--key", f"{tmp}/k.key", "--out", f"{tmp}/out",
                      "--serial", "1", "--revision", "bench"],
        }
        medians = {}
        for name, cmd in env_cmds.items():
            times = [timed_run(cmd) for _ in range(args.runs)]
            medians[name] = statistics.median(times)
            print(f"gwc {name:8s} median {medians[name]:.2f} s  (runs: "
                  f"{', '.join(f'{t:.2f}' for t in times)})")
        size = os.path.getsize(f"{tmp}/out/bundle.json")
        print(f"bundle size {size / 1e6:.1f} MB")
        total = medians["validate"] + medians["build"]
        print(f"validate + build: {total:.2f} s (target < 10 s)")


if __name__ == "__main__":
    main()
