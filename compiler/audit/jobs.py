"""Replaying a trail's files side by side, one process per core.

Replay costs about 40 us a call in Python (parse, rebuild, decide, compare), so a million calls is
most of a minute on one core. A trail rotates into files of ~100 MB (~100,000 calls), and each
file can be replayed on its own (a shipped object too: each process opens it from the store): a
pool of processes takes one file at a time, each keeping its own bundles and caches across the
files it takes, and the findings come back file by file, in trail order.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gwc.compiler.audit.query import Query, select
from gwc.compiler.audit.replay import Finding, Replay, Shelf, Totals
from gwc.runtime.bundle.format import BundlePayload
from gwc.runtime.bundle.read import trusted_keys

if TYPE_CHECKING:
    from gwc.compiler.audit.trail import TrailFile


@dataclass(frozen=True)
class Setup:
    """What a process needs to build its own replay (picklable: key files, not keys)."""

    folder: Path
    trust: tuple[str, ...]  # empty: bundles are read without checking signatures
    proposed: BundlePayload | None
    query: Query  # tool_calls_only, plus the user's filters

    def replay(self) -> Replay:
        return Replay(Shelf(self.folder, trusted_keys(self.trust) if self.trust else None),
                      self.proposed)


def _findings(replay: Replay, paths: list[TrailFile], query: Query) -> Iterator[Finding]:
    return replay.run((path, number, record) for path, number, _, record
                      in select(paths, query))


_worker: tuple[Replay, Query] | None = None


def _start(setup: Setup) -> None:
    global _worker
    _worker = (setup.replay(), setup.query)


def _one_file(path: TrailFile) -> tuple[list[Finding], Totals]:
    assert _worker is not None
    replay, query = _worker
    replay.totals = Totals()
    return list(_findings(replay, [path], query)), replay.totals


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def replay_trail(paths: list[TrailFile], setup: Setup, jobs: int, totals: Totals) -> Iterator[Finding]:
    """Every finding of the trail, in trail order; ``totals`` adds up as files are done."""
    if jobs <= 1 or len(paths) < 2:
        replay = setup.replay()
        replay.totals = totals
        yield from _findings(replay, paths, setup.query)
        return
    pool = ProcessPoolExecutor(min(jobs, len(paths)), initializer=_start, initargs=(setup,))
    try:
        for found, counted in pool.map(_one_file, paths):
            totals.add(counted)
            yield from found
    finally:
        pool.shutdown(cancel_futures=True)
