"""Time `gwc audit verify` and `query` reading a trail from a bucket against reading the same files.

Generates N records as bench/audit_tools.py does (files rotated at --file-mb), starts moto's S3
server on 127.0.0.1 (the test suite's, with Object Lock), uploads each file under the key a node
ships it to (gwc.runtime.audit.objects; the generated trail is unsigned, so no head objects), then
runs each command as the real CLI (a fresh process) on the files and on ``s3://gwc-audit/bench``,
printing the median wall time, records/s, MB/s and the peak resident memory of the command
(``/usr/bin/time``, when there is one). moto is in the same machine: the network is loopback.

    python bench/audit_store.py [--records 200000] [--file-mb 50] [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import audit_tools

from gwc.compiler.build.bundle import build
from gwc.compiler.build.keys import generate_keypair
from gwc.compiler.build.registry import load_registry
from gwc.runtime.audit.objects import StoreUrl, TrailObject

REPO = Path(__file__).resolve().parent.parent


def upload(client, files: list[Path], store: StoreUrl) -> None:
    """Each file under its shipping key, numbered from the trail's first record."""
    seq = 0
    for path in files:
        with path.open("rb") as fh:
            count = sum(1 for line in fh if line.strip())
        obj = TrailObject("gw-0:8080", "0123456789abcdef", seq + 1, seq + count)
        client.upload_file(str(path), store.bucket, obj.trail_key(store))
        seq += count


def timed(cmd: list[str], env: dict[str, str], runs: int) -> tuple[float, str, str]:
    """Median seconds, the first line of stdout, the peak resident memory."""
    meter = ["/usr/bin/time", "-f", "%M"] if shutil.which("/usr/bin/time") else []
    times, first, peak = [], "", "?"
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run([*meter, *cmd], env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        first = (proc.stdout.splitlines() or [""])[0][:100]
        if meter:
            peak = f"{int(proc.stderr.strip().splitlines()[-1]) / 1024:.0f} MB"
    return statistics.median(times), first, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--file-mb", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tests.support.s3_server import S3Server

    audit_tools.MAX_BYTES = args.file_mb * 1024 * 1024
    gwc = str(Path(sys.executable).parent / "gwc")
    tmp = Path(tempfile.mkdtemp(prefix="gwc-bench-store-"))
    server = S3Server(tmp)
    try:
        _, _, key = generate_keypair(tmp / "k")
        bundles = []
        for serial, prod in ((1, False), (2, True)):
            root = tmp / f"registry-{serial}"
            audit_tools.write_registry(root, prod)
            bundles.append(build(load_registry(root), key, tmp / "out", serial, f"bench{serial}"))
        files = audit_tools.generate(tmp, args.records, bundles)
        size = sum(f.stat().st_size for f in files)
        server.start()
        store = StoreUrl(server.bucket, "bench")
        upload(server.client(), files, store)
        print(f"{args.records:,} records in {len(files)} file(s), {size / 1e6:.0f} MB; "
              f"uploaded to {store} (moto, loopback)")
        env = {**os.environ, **server.env()}
        user = ["--user", "u0042@acme.example", "--format", "json"]
        for label, where in (("files", [str(f) for f in files]), ("bucket", [str(store)])):
            for command, extra in (("verify", []), ("query --user", user)):
                seconds, said, peak = timed([gwc, "audit", command.split()[0], *where, *extra],
                                            env, args.runs)
                print(f"  {command:<13} from the {label:<6}: {seconds:6.2f} s, "
                      f"{args.records / seconds:>9,.0f} records/s, {size / 1e6 / seconds:5.0f} "
                      f"MB/s, peak {peak}   {said if command == 'verify' else ''}")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
