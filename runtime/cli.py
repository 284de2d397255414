"""``gwc-runtime``: the data-plane entry point (the serving runtime lands with the runtime issue)."""
from __future__ import annotations

import sys


def main() -> None:
    print("gwc-runtime: the serving runtime is not built yet (see issue 3); "
          "use `gwc verify` to check bundles.", file=sys.stderr)
    sys.exit(2)
