"""Time the `gwc` command's start-up: a few commands on the example registry, each a real process.

Every command runs --runs times (default 10); the table gives the median, min and max wall seconds
(the machine's load average is printed too: a busy machine shows as a wide min-max). Then the
imports of `gwc validate` (`python -X importtime`, median of --import-runs runs): their own time
summed by top-level package, and those with the most cumulative time, nested as Python reports them:
what a start-up cut should look at.

Where PYTHONDONTWRITEBYTECODE is set and the checkout has no __pycache__, every run compiles gwc's
own modules from source (other packages ship their .pyc); --bytecode runs the commands with a
private bytecode cache instead (PYTHONPYCACHEPREFIX in a temporary folder, filled by a first run),
as an installed gwc starts.

    python bench/startup.py [--runs 10] [--top 25] [--bytecode] [--root .] [--gwc .venv/bin/gwc]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from compile import timed_run  # bench/compile.py, beside this script

REPO = Path(__file__).resolve().parents[1]


def import_times(argv: Sequence[str], runs: int, env: dict[str, str]) -> list[tuple[str, float, float]]:
    """(module as indented by -X importtime, self ms, cumulative ms) in import order, each the median
    over ``runs`` runs of ``argv`` (the same modules load every time)."""
    seen: dict[str, tuple[list[float], list[float]]] = {}
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True,
                              text=True, env=env)
        for line in proc.stderr.splitlines():
            if not line.startswith("import time:") or "[us]" in line:
                continue
            own, total, name = line.removeprefix("import time:").split("|", 2)
            selfs, totals = seen.setdefault(name.rstrip(), ([], []))
            selfs.append(int(own) / 1000)
            totals.append(int(total) / 1000)
    return [(name, statistics.median(own), statistics.median(total))
            for name, (own, total) in seen.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, choices=range(1, 101), metavar="1..100",
                        help="runs of each command (default 10)")
    parser.add_argument("--import-runs", type=int, default=3, choices=range(1, 21), metavar="1..20",
                        help="runs of -X importtime to take the median of (default 3)")
    parser.add_argument("--top", type=int, default=25, help="imports listed (default 25)")
    parser.add_argument("--bytecode", action="store_true",
                        help="run with a private bytecode cache, as an installed gwc starts")
    parser.add_argument("--root", type=Path, default=REPO, help="the registry (default: the example)")
    parser.add_argument("--gwc", type=Path, default=Path(sys.executable).with_name("gwc"),
                        help="the gwc script (default: the one beside this python)")
    args = parser.parse_args()
    gwc, root = str(args.gwc), str(args.root)

    with tempfile.TemporaryDirectory(prefix="gwc-startup-") as tmp:
        env = dict(os.environ)
        if args.bytecode:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = f"{tmp}/pycache"
        bytecode = ("a private bytecode cache" if args.bytecode else
                    "gwc's modules compiled from source on every run (PYTHONDONTWRITEBYTECODE)"
                    if os.environ.get("PYTHONDONTWRITEBYTECODE") else "the bytecode next to the sources")
        key, out = f"{tmp}/signing", f"{tmp}/out"
        timed_run([gwc, "keygen", "--out", key], env)
        commands = {
            "python -c pass (floor)": [sys.executable, "-c", "pass"],
            "gwc --help": [gwc, "--help"],
            "gwc validate": [gwc, "validate", root],
            "gwc validate --format json": [gwc, "validate", "--format", "json", root],
            "gwc build": [gwc, "build", root, "--key", f"{key}.key", "--out", out],
            "gwc inspect": [gwc, "inspect", f"{out}/bundle.json", "--trust", f"{key}.pub"],
        }
        for argv in commands.values():  # inspect reads the bundle build writes; fills the cache
            timed_run(argv, env)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"{time.strftime('%Y-%m-%d %H:%M')}  {os.cpu_count()} cores, load average {load:.2f}; "
              f"{args.runs} runs each, wall seconds; {bytecode}")
        print(f"{'command':<28}{'median':>8}{'min':>8}{'max':>8}")
        for label, argv in commands.items():
            times = [timed_run(argv, env) for _ in range(args.runs)]
            print(f"{label:<28}{statistics.median(times):>8.3f}{min(times):>8.3f}{max(times):>8.3f}")

        imports = import_times([gwc, "validate", root], args.import_runs, env)
    total = sum(own for _, own, _ in imports)  # each module's own time, counted once
    print(f"\nimports of gwc validate: {len(imports)} modules, {total:.0f} ms "
          f"(median of {args.import_runs} runs of -X importtime, which itself adds some)")
    packages: dict[str, float] = {}
    for name, own, _ in imports:
        parts = name.strip().split(".")
        top = ".".join(parts[:3] if parts[0] == "gwc" else parts[:1])  # gwc by layer
        packages[top] = packages.get(top, 0.0) + own
    print(f"{'self ms':>14}  package (its modules' own time)")
    for top, own in sorted(packages.items(), key=lambda p: -p[1])[:args.top]:
        print(f"{own:>14.1f}  {top}")
    print(f"\n{'cumulative ms':>14}{'self ms':>9}  module")
    for name, own, cumulative in sorted(imports, key=lambda i: -i[2])[:args.top]:
        print(f"{cumulative:>14.1f}{own:>9.1f}  {name}")


if __name__ == "__main__":
    main()
