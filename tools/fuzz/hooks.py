"""Deliberate failures for the smoke test (tests/python/test_fuzz_smoke.py): recipes with
entry 'hook' call one of these in the worker, so the test can prove that a crash, a hang, a wrong
answer and an untyped error are each classified as such and never take the runner down."""

from __future__ import annotations

import ctypes
import os
import signal
import time


def ok() -> int:
    return 2


def wrong() -> int:
    return 3  # the hook recipe expects 2


def typed() -> None:
    import scree

    raise scree.ArgumentError("hook: a typed error")


def untyped() -> None:
    raise KeyError("hook: an untyped error")


def segfault() -> None:
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def abort() -> None:
    os.abort()


def fpe() -> None:
    os.kill(os.getpid(), signal.SIGFPE)


def exit_quietly() -> None:
    os._exit(3)  # a C library calling exit(): no exception, no signal


def hang() -> None:
    time.sleep(3600)


def segfault_if_two(arr) -> int:
    """Crashes on an Array of two or more sequences: what the minimiser must keep while shrinking."""
    if len(arr) >= 2:
        segfault()
    return 2
