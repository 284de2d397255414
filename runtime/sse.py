"""Just enough Server-Sent Events framing to rewrite one JSON-RPC response inside a stream."""
from __future__ import annotations

import json
from typing import Any, Callable

Rewrite = Callable[[dict[str, Any]], dict[str, Any]]


def rewrite_events(body: bytes, rewrite: Rewrite) -> bytes:
    """Apply ``rewrite`` to every JSON ``data`` payload of a complete SSE body; keep all else."""
    text = body.decode("utf-8").replace("\r\n", "\n")
    out = []
    for event in text.split("\n\n"):
        if not event:
            continue
        lines = event.split("\n")
        data = "\n".join(line[5:].removeprefix(" ") for line in lines if line.startswith("data:"))
        if data:
            try:
                message = json.loads(data)
            except ValueError:
                message = None
            if isinstance(message, dict):
                new_data = json.dumps(rewrite(message), separators=(",", ":"))
                lines = [line for line in lines if not line.startswith("data:")] + [f"data: {new_data}"]
        out.append("\n".join(lines))
    return ("\n\n".join(out) + "\n\n").encode("utf-8")
