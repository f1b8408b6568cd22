"""Carry out planned operations, keeping a journal so a failed run can undo exactly what it did."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Protocol

from vkmsremote.errors import VkmsRemoteError

from .plan import Mkdir, Op, Symlink, WriteAttr, inverse


class Executor(Protocol):
    """Runs one operation (``Configfs`` does; tests wrap it to inject failures)."""

    def run(self, op: Op) -> None: ...


@dataclass(slots=True)
class Journal:
    """The operations that succeeded, in order."""

    done: list[Op] = field(default_factory=list)

    def created(self) -> list[PurePosixPath]:
        """Paths this run brought into being (directories, links, and ``enabled`` if it enabled)."""
        out: list[PurePosixPath] = []
        for op in self.done:
            if isinstance(op, Mkdir):
                out.append(op.path)
            elif isinstance(op, Symlink):
                out.append(op.link)
            elif isinstance(op, WriteAttr) and op.path.name == "enabled" and op.value == "1":
                out.append(op.path)
        return out


def apply(ops: Iterable[Op], executor: Executor, journal: Journal | None = None) -> Journal:
    """Run ``ops`` in order, stopping at the first failure (which propagates); returns the journal.

    Pass a journal to have it filled even when an exception escapes, for :func:`rollback`.
    """
    if journal is None:
        journal = Journal()
    for op in ops:
        executor.run(op)
        journal.done.append(op)
    return journal


def rollback(journal: Journal, executor: Executor) -> list[VkmsRemoteError]:
    """Undo the journal's operations in reverse order (disable, unlink, rmdir); returns what failed.

    Every inverse is attempted even if one fails, so as little as possible is left behind.
    """
    failures: list[VkmsRemoteError] = []
    for op in reversed(journal.done):
        undo = inverse(op)
        if undo is None:
            continue
        try:
            executor.run(undo)
        except VkmsRemoteError as e:
            failures.append(e)
    journal.done.clear()
    return failures
