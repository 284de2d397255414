"""What `gwc audit replay` prints: counts first (what a reviewer reads), then the calls.

A preview over a million calls can change a million of them, so the table keeps counts per
server, tool and kind of change, and lists only the first ``limit`` calls of each kind; JSON lines
(``--format json``) stream every finding instead, for jq.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from gwc.compiler.audit.replay import Finding, Totals
from gwc.compiler.audit.trail import Table, cell

TITLES = {"difference": "Differences: the replayed decision is not the recorded one",
          "unreplayable": "Unreplayable: not checked",
          "change": "Changes under the proposed bundle",
          "undeterminable": "Undeterminable: the proposed bundle reads arguments the trail lacks"}
COLUMNS = ("where", "time", "request", "user", "server", "tool", "detail")


def summary(totals: Totals, files: int, against: str | None) -> tuple[str, bool]:
    """The headline, and whether the run failed: replay fails on any difference or call it could
    not check; a preview fails only when incomplete (calls undeterminable or unreadable)."""
    kinds = totals.by_kind
    if against is not None:
        headline = (f"previewed {totals.calls} tools/call record(s) in {files} file(s) under "
                    f"{against}: {totals.same} unchanged, {kinds.get('change', 0)} changed, "
                    f"{kinds.get('undeterminable', 0)} undeterminable")
        failed = kinds.get("undeterminable", 0) + kinds.get("unreplayable", 0)
    else:
        headline = (f"replayed {totals.calls} tools/call record(s) in {files} file(s): "
                    f"{totals.same} same, {kinds.get('difference', 0)} different")
        failed = kinds.get("difference", 0) + kinds.get("unreplayable", 0)
    headline += f", {kinds.get('unreplayable', 0)} unreplayable"
    if totals.skipped:
        headline += f", {totals.skipped} without a recorded decision (not compared)"
    return headline, failed > 0


class Report:
    def __init__(self, limit: int) -> None:
        self._limit = limit  # 0: no limit
        self._rows: dict[str, list[Finding]] = {kind: [] for kind in TITLES}
        self._groups: Counter[tuple[str, str, str, str]] = Counter()

    def add(self, finding: Finding) -> None:
        rows = self._rows[finding.kind]
        if not self._limit or len(rows) < self._limit:
            rows.append(finding)
        what = finding.label or finding.detail
        self._groups[(finding.kind, cell(finding.server), cell(finding.tool), what)] += 1

    def render(self, headline: str, totals: Totals, write: Callable[[str], object]) -> None:
        write(headline + "\n")
        for kind, title in TITLES.items():
            count = totals.by_kind.get(kind, 0)
            if not count:
                continue
            write(f"\n{title} ({count}):\n")
            groups = Table(("count", "server", "tool", "what"), write)
            for (group_kind, server, tool, what), n in self._groups.most_common():
                if group_kind == kind:
                    groups.add((str(n), server, tool, what))
            groups.flush()
            write("\n")
            rows = Table(COLUMNS, write)
            for f in self._rows[kind]:
                rows.add((f"{f.file}:{f.line}", cell(f.time), cell(f.request_id), f.user,
                          cell(f.server), cell(f.tool), f.detail))
            rows.flush()
            if count > len(self._rows[kind]):
                write(f"... and {count - len(self._rows[kind])} more "
                      "(--limit 0 lists all; --format json streams every one)\n")
