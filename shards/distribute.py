"""Distributors run shard tasks: in-process and sequential here (for debugging); Ray lives in cluster/shard.py.

A distributor takes a function and an iterable of argument tuples (pulled lazily, as it has room: the sharding
driver's plan is a generator) and yields one Outcome per tuple as it finishes
(in any order), having retried a raising task at most `retries` more times.
"""
from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    position: int           # index into the argument sequence, in the order pulled
    result: Any = None
    error: str | None = None
    attempts: int = 1


class Distributor(Protocol):
    def run(self, fn: Callable, args: Iterable[tuple], retries: int) -> Iterator[Outcome]: ...


class SequentialDistributor:
    """Runs every task in this process, one after the other."""

    def run(self, fn: Callable, args: Iterable[tuple], retries: int) -> Iterator[Outcome]:
        for pos, a in enumerate(args):
            for attempt in range(1, retries + 2):
                try:
                    yield Outcome(pos, fn(*a), attempts=attempt)
                    break
                except Exception:  # noqa: BLE001 - a failed task is retried, then reported, never fatal
                    err = traceback.format_exc(limit=5)
                    log.warning("task %d attempt %d failed: %s", pos, attempt, err.strip().splitlines()[-1])
            else:
                yield Outcome(pos, error=err, attempts=retries + 1)
