"""What the request shape check costs on the event loop (``gwc.runtime.protocol.wire.check_limits``: depth
at most 64, integers within 64 bits), beside parsing the same body with orjson, for ordinary and
hostile ``tools/call`` bodies up to the node's default 4 MiB limit. Medians of ``--runs`` runs.

    python bench/request_limits.py [--runs 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gwc.runtime.protocol.wire import check_limits


def body(arguments: dict[str, Any]) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                         "params": {"name": "t", "arguments": arguments}})


CASES = {
    "ordinary": lambda: body({"env": "staging", "text": "hello"}),
    "20k-objects": lambda: body({"items": [{f"k{i}": i} for i in range(20_000)]}),
    "4mib-objects": lambda: body({"items": [{f"k{i}": i} for i in range(270_000)]}),
    "4mib-numbers": lambda: body({"items": [1] * 1_900_000}),
    "deep-64": lambda: b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t",'
                       b'"arguments":{"a":' + b"[" * 60 + b"]" * 60 + b"}}}",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    print(f"{'case':14s} {'size':>9s} {'parse ms':>9s} {'check ms':>9s}")
    for name, make in CASES.items():
        raw = make()
        parse, check = [], []
        for _ in range(runs):
            started = time.perf_counter()
            message = orjson.loads(raw)
            parse.append(time.perf_counter() - started)
            started = time.perf_counter()
            check_limits(message, raw)
            check.append(time.perf_counter() - started)
        print(f"{name:14s} {len(raw) / 1024:7.0f}KB {statistics.median(parse) * 1e3:9.3f} "
              f"{statistics.median(check) * 1e3:9.3f}")


if __name__ == "__main__":
    main()
