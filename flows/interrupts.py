"""SIGTERM and SIGINT stop a `quanta run` promptly, whatever it is doing.

Prefect's flow engine replaces the SIGTERM handler while a flow runs (it raises `TerminationSignal` in the main
thread and then reports the crash to the API, retrying for minutes when the server is gone), and a task's work runs
on in its thread whatever the main thread does. So the stop does not go through the main thread at all: the C-level
signal handler writes the signal's number to a pipe (`signal.set_wakeup_fd`, which stays set whichever Python
handler is installed), and a watcher thread reading that pipe stops the run:

1. one line on stderr (`error: stopped by SIGTERM ...`), and no more output from this process; the children ignore
   Ctrl-C (SIGINT is blocked in every thread and child started in the block), so a repeated Ctrl-C to the process
   group adds no traceback of a Dask worker that was still starting;
2. every child process (the temporary Prefect server, Dask workers) gets SIGTERM, then SIGKILL after `GRACE_S`;
3. the process exits with 128 + the signal's number, without waiting for the task threads.

What a stopped run leaves is what kill -9 leaves: finished tasks' results and published artifacts (complete, as
publication is atomic), and `_tmp` entries of this process that are never trusted and are removed by the next run.
The next run resumes from the cache.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator

GRACE_S = 5.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _stop_children(grace: float = GRACE_S) -> None:
    import psutil

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(alive, timeout=grace)


def _stop(signum: int) -> None:
    name = signal.Signals(signum).name
    logging.disable(logging.CRITICAL)  # the engine's crash reports and connection errors: not on the terminal
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        print(f"error: stopped by {name}: the run did not finish; its finished tasks are cached, and the same "
              "command resumes from them", file=sys.stderr, flush=True)
    with contextlib.suppress(Exception):  # nothing after the one line: no traceback of a thread the signal woke
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stderr.fileno())
        os.dup2(devnull, sys.stdout.fileno())
    with contextlib.suppress(Exception):
        _stop_children()
    os._exit(128 + signum)


def _watch(read_fd: int) -> None:
    try:
        while True:
            try:
                data = os.read(read_fd, 64)
            except InterruptedError:
                continue
            if not data:  # the block ended
                return
            for signum in data:
                if signum in SIGNALS:
                    _stop(signum)
    finally:
        with contextlib.suppress(OSError):
            os.close(read_fd)


def _note(signum, frame) -> None:
    """The Python-level handler: nothing to do here (the watcher thread stops the run), but one must be installed
    for the wakeup pipe to receive the signal, and it keeps KeyboardInterrupt out of the main thread."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT stop the process as described in the module docstring. Outside the main
    thread (where signals cannot be handled) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous = {s: signal.signal(s, _note) for s in SIGNALS}
    threading.Thread(target=_watch, args=(read_fd,), daemon=True, name="stop-on-signals").start()
    # SIGINT blocked in this thread from here on, so in every thread and child process started in the block (they
    # inherit the mask): a Ctrl-C reaches the whole process group, and a Dask worker still importing would print a
    # KeyboardInterrupt traceback after the one line; the watcher thread, started before, still takes it for the
    # process, and `_stop` ends the children with SIGTERM
    masked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, masked)
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_fd)  # the watcher reads EOF and ends
