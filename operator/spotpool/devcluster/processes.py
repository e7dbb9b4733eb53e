"""Child processes that never outlive the run that started them.

Each child gets its own process group (so stopping it stops whatever it forked) and a parent-death
signal (so a killed or crashed parent leaves nothing behind). Used by the local control plane and by
`spotpool demo`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _own_group_dying_with_parent(death_signal: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child, between fork and exec
        os.setpgrp()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, death_signal)

    return preexec


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM to its process group, SIGKILL after `timeout` seconds, then reap the group."""
        if self.running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError, PermissionError):  # anything left in its group
            os.killpg(self.pid, signal.SIGKILL)


def spawn(
    name: str,
    args: list[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    death_signal: int = signal.SIGTERM,
) -> Child:
    """Start `args` with output appended to `log`. `death_signal` reaches it if the parent dies:
    SIGTERM lets a well-behaved child clean up; SIGKILL suits children whose graceful shutdown
    depends on siblings that die at the same moment."""
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, preexec_fn=_own_group_dying_with_parent(death_signal),
        )
    return Child(name, popen, log)
