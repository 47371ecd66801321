"""The supervisor: ``count`` child processes of one role, kept running.

Each child is a fresh ``taskflow`` process (spawned, not forked from a process that
already runs an event loop, holds connections and threads), started in a session (and
process group) of its own so that a Ctrl-C in a terminal reaches the supervisor only and
the children hear it once, forwarded. A child that exits unasked is restarted with a
capped backoff. On SIGTERM or SIGINT every child is told the same and shuts down
gracefully (a worker stops claiming and finishes or hands back its jobs); one that is not
done within the stop timeout is killed. Children hold the read end of a pipe whose write
end only the supervisor has: if the supervisor dies, even by SIGKILL, they see it close
and shut down (:func:`watch_parent`), so none is left running on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Sequence

from taskflow import metrics
from taskflow.processes.pages import socket_path

log = logging.getLogger(__name__)


def cpu_count() -> int:
    """The cores this process may run on (its affinity, e.g. a container's cpuset)."""
    if hasattr(os, "process_cpu_count"):  # Python 3.13
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def process_count(setting: int | str) -> int:
    """``worker.processes`` / ``api.workers`` as a number: 0 or ``auto`` is one per core
    (a command line or a settings file may give either as text)."""
    count = 0 if setting == "auto" else int(setting)
    return count or cpu_count()


def child_options(slot: int, folder: str, parent_fd: int) -> list[str]:
    """What the supervisor adds to a child's command line (see cli's hidden options)."""
    return ["--child-slot", str(slot), "--child-dir", folder, "--parent-fd", str(parent_fd)]


class Supervisor:
    """Runs ``count`` children of ``role`` from ``command`` (a ``taskflow`` command line to
    which :func:`child_options` are added) until :meth:`run`'s ``stop`` is set."""

    def __init__(self, role: str, count: int, command: Sequence[str], *,
                 env: dict[str, str] | None = None, pass_fds: Sequence[int] = (),
                 stop_timeout: float, on_exit: Callable[[int], None] | None = None,
                 min_backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        self.role = role
        self.count = count
        self.command = list(command)
        self.env = env
        self.pass_fds = tuple(pass_fds)
        self.stop_timeout = stop_timeout
        self.on_exit = on_exit
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.folder = tempfile.mkdtemp(prefix=f"taskflow-{role}-")  # mode 0700
        self.children: dict[int, asyncio.subprocess.Process] = {}
        self.exit_codes: dict[int, int] = {}
        self._stopping = False
        self._told: set[int] = set()  # children sent a stop signal
        self._parent_r, self._parent_w = os.pipe()  # both ends not inherited by default
        metrics.PROCESSES_UP.set_function(
            lambda: sum(1 for c in self.children.values() if c.returncode is None))

    def ready(self) -> int:
        """Children running whose metrics page is up (they have connected their stores)."""
        return sum(1 for slot, child in self.children.items()
                   if child.returncode is None
                   and os.path.exists(socket_path(self.folder, slot)))

    def forward(self, signum: int) -> None:
        """Send ``signum`` to every child (the CLI calls this on SIGTERM and SIGINT)."""
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stopping = True
        self._signal(signum, list(self.children.values()))

    def _signal(self, signum: int, children: list[asyncio.subprocess.Process]) -> None:
        for child in children:
            if child.returncode is None:
                self._told.add(child.pid)
                with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                    child.send_signal(signum)

    async def run(self, stop: asyncio.Event) -> int:
        """Keep the children running until ``stop`` is set, then stop them all; 0 when
        every child exited cleanly."""
        slots = [asyncio.create_task(self._keep(slot, stop), name=f"{self.role} process {slot}")
                 for slot in range(self.count)]
        try:
            await stop.wait()
            # Those the signal did not reach (stop set otherwise); a second SIGTERM would
            # make a child exit at once.
            self._stopping = True
            self._signal(signal.SIGTERM, [c for c in self.children.values()
                                          if c.pid not in self._told])
            await self._wait_or_kill()
            await asyncio.gather(*slots)
        finally:
            for task in slots:
                task.cancel()
            await asyncio.gather(*slots, return_exceptions=True)
            for child in self.children.values():
                if child.returncode is None:  # the run itself was cut short
                    with contextlib.suppress(ProcessLookupError):
                        child.kill()
            os.close(self._parent_w)
            os.close(self._parent_r)
            shutil.rmtree(self.folder, ignore_errors=True)
        bad = {slot: code for slot, code in self.exit_codes.items() if code != 0}
        if bad:
            log.error("%s processes exited uncleanly: %s", self.role, bad)
        return 1 if bad else 0

    async def _wait_or_kill(self) -> None:
        running = [c for c in self.children.values() if c.returncode is None]
        if not running:
            return
        _, late = await asyncio.wait([asyncio.ensure_future(c.wait()) for c in running],
                                     timeout=self.stop_timeout)
        if late:
            log.error("%d %s processes did not stop within %.0fs: killing them", len(late),
                      self.role, self.stop_timeout)
            for child in self.children.values():
                if child.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.kill()

    async def _spawn(self, slot: int) -> asyncio.subprocess.Process:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path(self.folder, slot))  # ready() waits for the new one
        return await asyncio.create_subprocess_exec(
            *self.command, *child_options(slot, self.folder, self._parent_r),
            env=self.env, pass_fds=(self._parent_r, *self.pass_fds), start_new_session=True)

    async def _keep(self, slot: int, stop: asyncio.Event) -> None:
        """Run the child of ``slot``; restart it when it exits before ``stop``."""
        backoff = self.min_backoff
        while not self._stopping:
            began = time.monotonic()
            try:
                outcome = await self._run_child(slot)
            except OSError:  # could not even start it (no memory, no such file)
                log.exception("could not start %s process %d", self.role, slot)
                outcome = "could not start"
            if outcome is None:
                return  # stopped as asked
            if time.monotonic() - began > 60:
                backoff = self.min_backoff  # it ran well for a while: a new failure
            log.error("%s process %d %s; restarting it in %.1fs", self.role, slot, outcome,
                      backoff)
            metrics.PROCESS_RESTARTS.inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(self.max_backoff, backoff * 2)

    async def _run_child(self, slot: int) -> str | None:
        """Start the child of ``slot`` and wait for its exit: None if it was asked to
        stop, else what became of it."""
        child = self.children[slot] = await self._spawn(slot)
        log.info("%s process %d started (pid %d)", self.role, slot, child.pid)
        if self._stopping:  # the stop came while it was starting
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
        code = await child.wait()
        if self.on_exit is not None:
            self.on_exit(slot)
        if self._stopping:
            self.exit_codes[slot] = code
            log.info("%s process %d (pid %d) exited with %d", self.role, slot, child.pid, code)
            return None
        del self.children[slot]
        return f"(pid {child.pid}) exited with {_describe(code)}"


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


def watch_parent(fd: int, stop: asyncio.Event) -> None:
    """In a child: set ``stop`` when the supervisor's end of the pipe ``fd`` closes (the
    supervisor exited, whatever the way), as a SIGTERM would."""
    loop = asyncio.get_running_loop()

    def gone() -> None:
        loop.remove_reader(fd)
        if not stop.is_set():
            log.warning("the supervisor is gone: shutting down")
            stop.set()

    # A pipe whose writer is gone reads as end-of-file at once: this also covers a
    # supervisor that died before the child got here.
    loop.add_reader(fd, gone)
