"""Step runner and process keeping for the end-to-end scenario.

Every step prints exactly one line, `PASS <step>` or `FAIL <step>: <reason>` (or `SKIP <step>`),
and the run ends with `N passed, M failed` alone on a line. Processes started here write their
stdout and stderr to one log file each; on a failure the tails of the logs the step names are
printed, and every log stays on disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable


class StepFailed(Exception):
    """A step's check did not hold; the message is the one-line reason."""


class Deadline(Exception):
    """The scenario's overall time budget ran out."""


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@dataclass
class Clock:
    """The scenario's overall deadline, checked by every wait."""

    end: float

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self) -> None:
        if self.left() <= 0:
            raise Deadline("the scenario's time budget ran out")


def wait_until(
    clock: Clock,
    what: str,
    probe: Callable[[], object],
    within: float,
    every: float = 0.25,
) -> object:
    """Calls `probe` until it returns something truthy, at most `within` seconds (and never past
    the scenario's deadline), sleeping `every` seconds between tries. The last exception or falsy
    result is named in the failure."""
    end = min(time.monotonic() + within, clock.end)
    last: object = None
    tries = 0
    while True:
        tries += 1
        try:
            got = probe()
            if got:
                return got
            last = got
        except Exception as e:  # noqa: BLE001 - any probe error means "not yet"
            last = e
        if time.monotonic() + every > end:
            if end == clock.end:
                raise Deadline(f"the scenario's time budget ran out waiting for {what} "
                               f"({tries} tries; last: {last!r})")
            raise StepFailed(f"{what} not within {within:.0f}s ({tries} tries; last: {last!r})")
        time.sleep(every)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path


@dataclass
class Procs:
    """The processes the scenario started, each with its log file under `logs`."""

    logs: Path
    running: dict[str, Proc] = field(default_factory=dict)

    def start(
        self,
        name: str,
        argv: list[str],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        assert name not in self.running, name
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            out.write(f"=== {time.strftime('%H:%M:%S')} start: {' '.join(argv)}\n".encode())
            out.flush()
            popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc = Proc(name, popen, log)
        self.running[name] = proc
        return proc

    def alive(self, name: str) -> bool:
        return self.running[name].popen.poll() is None

    def stop(self, name: str, grace: float = 10.0) -> int | None:
        """SIGTERM, a bounded wait, then SIGKILL. Returns the exit status."""
        proc = self.running.pop(name)
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(grace)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(5)
        with open(proc.log, "ab") as out:
            out.write(f"=== {time.strftime('%H:%M:%S')} exit status {proc.popen.returncode}\n".encode())
        return proc.popen.returncode

    def stop_all(self) -> None:
        # Signal everything first, then wait: the processes shut down in parallel.
        for proc in self.running.values():
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for name in list(self.running):
            self.stop(name, grace=10.0)


def tail(path: Path, lines: int) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"({e})"
    text = data.decode("utf-8", "replace").splitlines()
    return "\n".join(text[-lines:])


@dataclass
class Runner:
    """Runs steps in order. The first failure stops the chain: the steps after it are printed
    as SKIP, since each one builds on the state the ones before it made."""

    logs: Path
    clock: Clock
    tail_lines: int = 30
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    stopped: str | None = None

    def step(
        self,
        name: str,
        fn: Callable[[], str | None],
        logs: Iterable[str] = (),
    ) -> bool:
        if self.stopped is not None:
            say(f"SKIP {name} (after the failure of: {self.stopped})")
            self.skipped += 1
            return False
        start = time.monotonic()
        try:
            detail = fn()
        except (StepFailed, Deadline) as e:
            self._fail(name, str(e), logs)
            return False
        except Exception as e:  # noqa: BLE001 - an unexpected error is a failure of this step
            self._fail(name, f"{type(e).__name__}: {e}", logs, trace=traceback.format_exc())
            return False
        took = time.monotonic() - start
        say(f"PASS {name} ({took:.1f}s{'; ' + detail if detail else ''})")
        self.passed += 1
        return True

    def skip(self, name: str, why: str) -> None:
        say(f"SKIP {name} ({why})")
        self.skipped += 1

    def _fail(self, name: str, reason: str, logs: Iterable[str], trace: str | None = None) -> None:
        reason = " ".join(reason.split())
        say(f"FAIL {name}: {reason}")
        self.failed += 1
        self.stopped = name
        if trace:
            say("  --- traceback ---")
            for line in trace.rstrip().splitlines():
                say("  " + line)
        for log in logs:
            path = self.logs / f"{log}.log"
            say(f"  --- last {self.tail_lines} lines of {path} ---")
            for line in tail(path, self.tail_lines).splitlines():
                say("  " + line)

    def summary(self) -> None:
        if self.skipped:
            say(f"{self.skipped} step(s) skipped")
        say(f"{self.passed} passed, {self.failed} failed")
