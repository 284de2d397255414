"""Time `gwc audit verify|query|replay` on a large generated trail (a busy fleet's month).

Generates N records (default 1,000,000) shaped as the runtime writes them (docs/audit.md):
tools/call records decided by two real signed bundles (the policy changed halfway), some
tools/list records, 2,000 users in 8 teams each working mostly with a few servers, agents acting
for users, 30 days of traffic, files rotated at 100 MB and chained as the runtime's writer
chains them (gwc.runtime.audit.chain.sealed_line; generation is not timed). Then runs each command
as the real CLI (a fresh process) and prints the median of the runs and records/s; what a query
prints goes to /dev/null.

    python bench/audit_tools.py [--records 1000000] [--runs 3] [--timeout 600] [--keep DIR]
"""
from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from gwc.compiler.build.bundle import Built, build
from gwc.compiler.build.keys import generate_keypair
from gwc.compiler.build.registry import load_registry
from gwc.runtime.audit.chain import GENESIS, sealed_line
from gwc.runtime.audit.record import policy_fields, principal_fields
from gwc.runtime.audit.shape import arguments_record
from gwc.runtime.policy.decide import Principal, decide

SERVERS, TEAMS, USERS, DAYS = 40, 8, 2000, 30
START = datetime(2026, 10, 22, tzinfo=UTC)
MAX_BYTES = 100 * 1024 * 1024
ENVS = ("dev", "staging", "prod")
COUNTS = (1, 1, 1, 2, 5, 10, 20, 50, 100, 150)


def write_registry(root: Path, prod_writes: bool) -> None:
    """40 servers x 8 tools; owner team, engineering reads, deployers write with conditions,
    contractors never write. ``prod_writes``: the second bundle lets deployers write to prod."""
    (root / "registry").mkdir(parents=True)
    (root / "gateway.yaml").write_text(yaml.safe_dump({"identity": {
        "issuer": "https://login.acme.example", "audience": "gwc",
        "jwks_uri": "https://login.acme.example/jwks.json"}}))
    for i in range(SERVERS):
        name, owner = f"server-{i:02d}", f"team-{i % TEAMS}"
        tools = {f"read_{t}": {"access": "read"} for t in range(4)}
        tools.update({f"write_{t}": {"access": "write", "approval": "none"} for t in range(4)})
        (root / "registry" / f"{name}.yaml").write_text(yaml.safe_dump({
            "name": name, "owner": owner, "upstream": f"https://{name}.internal/mcp",
            "visibility": [f"team:{owner}", "group:engineering"], "tools": tools}))
        envs = ["dev", "staging", "prod"] if prod_writes else ["dev", "staging"]
        rules = [{"id": f"{name}-owner", "subject": {"team": owner},
                  "resource": {"server": name}, "action": "*"},
                 {"id": f"{name}-eng-read", "subject": {"group": "engineering"},
                  "resource": {"server": name}, "action": "read"},
                 {"id": f"{name}-deploy", "subject": {"group": "deployers"},
                  "resource": {"server": name}, "action": "write",
                  "conditions": {"env": envs, "count": {"max": 100}}},
                 {"id": f"{name}-no-contractors", "subject": {"group": "contractors"},
                  "resource": {"server": name}, "action": "write", "effect": "deny"}]
        folder = root / "policies" / owner
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(rules))


def principals(rng: random.Random) -> list[tuple[Principal, list[str]]]:
    """Users and the servers each mostly works with (their team's, and a few others)."""
    people = []
    for u in range(USERS):
        groups = {f"team-{u % TEAMS}"}
        if rng.random() < 0.8:
            groups.add("engineering")
        if rng.random() < 0.2:
            groups.add("deployers")
        if rng.random() < 0.05:
            groups.add("contractors")
        home = [f"server-{i:02d}" for i in range(u % TEAMS, SERVERS, TEAMS)]
        home += [f"server-{rng.randrange(SERVERS):02d}" for _ in range(3)]
        people.append((Principal(f"u{u:04d}@acme.example", frozenset(groups)), home))
    return people


def record(bundle: Built, rng: random.Random, people: list[tuple[Principal, list[str]]],
           when: str, n: int) -> dict:
    human, home = rng.choice(people)
    who = human if rng.random() < 0.9 else Principal(
        "agent-ci", human.groups, "agent", human.subject)
    base = {"type": "call", "time": when, "request_id": f"req-{n:08d}", "node": f"gw-{n % 4}:8080",
            "bundle": {"digest": bundle.digest, "serial": bundle.payload.serial},
            "principal": principal_fields(who)}
    server = rng.choice(home) if rng.random() < 0.8 else f"server-{rng.randrange(SERVERS):02d}"
    if rng.random() < 0.05:
        return {**base, "type": "list", "endpoint": "", "method": "tools/list", "server": None,
                "tool": None, "access": None, "arguments": None, "policy": None,
                "decision": "allow", "approval": None, "bypass": None, "outcome": "forwarded",
                "error": None, "upstream_status": None,
                "latency_ms": {"gateway": round(rng.uniform(0.2, 2), 3), "upstream": None}}
    tool = rng.choice(("read_0", "read_1", "read_2", "read_3", "write_0", "write_1"))
    arguments = ({"env": rng.choice(ENVS), "count": rng.choice(COUNTS), "service": "api",
                  "options": {"dry_run": rng.random() < 0.5}} if tool.startswith("write")
                 else {"query": "select * from t where id = ?", "limit": 50})
    d = decide(bundle.payload, who, server, tool, arguments)
    allowed = d.effect == "allow"
    return {**base, "endpoint": server if n % 3 else "", "method": "tools/call", "server": server,
            "tool": tool, "access": d.access,
            "arguments": arguments_record(bundle.payload, server, tool, arguments),
            "policy": policy_fields(d),
            "decision": "allow" if allowed else ("not_found" if d.effect == "not_found"
                                                 else "deny"),
            "approval": None, "bypass": None, "outcome": "forwarded" if allowed else "refused",
            "error": None if allowed else "denied", "upstream_status": 200 if allowed else None,
            "latency_ms": {"gateway": round(rng.uniform(0.2, 2), 3),
                           "upstream": round(rng.uniform(5, 80), 3) if allowed else None}}


def generate(folder: Path, count: int, bundles: list[Built]) -> list[Path]:
    """The trail, rotated like gwc.runtime.audit.writer: audit.jsonl.000001 ... then audit.jsonl."""
    rng, people = random.Random(7), principals(random.Random(11))
    step = timedelta(days=DAYS) / count
    files: list[Path] = []
    prev, size, out = GENESIS, 0, None

    def open_next() -> None:
        nonlocal out, size, prev
        if out is not None:
            out.close()
        files.append(folder / f"audit.jsonl.{len(files) + 1:06d}")
        out, size = files[-1].open("wb"), 0
        start = {"type": "start", "node": "gw-0:8080", "ts": time.time()}
        out.write(sealed_line(start, prev))
        prev = start["hash"]

    open_next()
    for n in range(count):
        when = (START + step * n).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        entry = record(bundles[n * len(bundles) // count], rng, people, when, n)
        line = sealed_line(entry, prev)  # as the runtime's writer does: sorted keys, hash last
        prev = entry["hash"]
        out.write(line)
        size += len(line)
        if size >= MAX_BYTES and n < count - 1:
            open_next()
    out.close()
    files[-1] = files[-1].rename(folder / "audit.jsonl")
    return files


def timed(cmd: list[str], runs: int, timeout: float, ok: tuple[int, ...], show: bool
          ) -> list[float]:
    """Wall times of ``runs`` runs; prints the command's summary line (stderr, or the first
    line of stdout when ``show``)."""
    times, said = [], ""
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE if show else subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=timeout)
        times.append(time.perf_counter() - start)
        if proc.returncode not in ok:
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]!r}")
        said = ((proc.stdout or b"") if show else proc.stderr).decode().strip().split("\n")[0]
    print(f"    {said}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per command run")
    parser.add_argument("--keep", type=Path, default=None, help="generate into DIR and keep it")
    args = parser.parse_args()
    gwc = str(Path(sys.executable).parent / "gwc")
    tmp = Path(tempfile.mkdtemp()) if args.keep is None else args.keep
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        _, pub_path, key = generate_keypair(tmp / "k")
        bundles = []
        for serial, prod in ((1, False), (2, True)):
            root = tmp / f"registry-{serial}"
            write_registry(root, prod)
            bundles.append(build(load_registry(root), key, tmp / "out", serial, f"bench{serial}"))
        start = time.perf_counter()
        files = generate(tmp, args.records, bundles)
        size = sum(f.stat().st_size for f in files)
        print(f"generated {args.records:,} records in {len(files)} file(s), {size / 1e6:.0f} MB, "
              f"in {time.perf_counter() - start:.0f} s")
        trail = [str(f) for f in files]
        day = (START + timedelta(days=DAYS // 2)).date()
        week = (START + timedelta(days=7)).date(), (START + timedelta(days=14)).date()
        commands = {
            "verify": ([gwc, "audit", "verify", *trail], (0,), True),
            "query one user, one day (json)": (
                [gwc, "audit", "query", *trail, "--user", "u0042@acme.example", "--since",
                 str(day), "--until", str(day + timedelta(days=1)), "--format", "json"], (0,), False),
            "query one week, everyone (table)": (
                [gwc, "audit", "query", *trail, "--since", str(week[0]), "--until", str(week[1])],
                (0,), False),
            "query everything (json)": ([gwc, "audit", "query", *trail, "--format", "json"], (0,),
                                        False),
            "replay all": ([gwc, "audit", "replay", *trail, "--bundles", str(tmp / "out"),
                            "--trust", str(pub_path)], (0,), True),
            "replay --against (preview)": (
                [gwc, "audit", "replay", *trail, "--bundles", str(tmp / "out"), "--trust",
                 str(pub_path), "--against", str(tmp / "registry-2")], (0, 1), True),
        }
        for name, (cmd, ok, show) in commands.items():
            print(f"gwc audit {name}")
            times = timed(cmd, args.runs, args.timeout, ok, show)
            median = statistics.median(times)
            print(f"    median {median:.2f} s, {args.records / median:,.0f} records/s  (runs: "
                  f"{', '.join(f'{t:.2f}' for t in times)})")
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
