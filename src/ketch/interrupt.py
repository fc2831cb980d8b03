"""Ending a save on SIGINT or SIGTERM without losing what it wrote.

While `stop_signals()` is active (in the main thread), both signals raise
KeyboardInterrupt as Ctrl-C always does, except inside `held()` sections,
where the signal waits for the section's end: a pack writer updates its state
in such sections, so an interrupted writer is never caught half-way through an
entry and can still finish the pack of the complete objects it has.
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any, TypeVar

from ketch.errors import KetchError

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_MAIN = threading.main_thread().ident


class Interrupted(KetchError):
    """SIGINT or SIGTERM ended the command."""


F = TypeVar("F", bound=Callable[..., Any])


def reported_as(message: str) -> Callable[[F], F]:
    """A command whose KeyboardInterrupt ends it with Interrupted(message): the
    core lets KeyboardInterrupt through (a `ketch run` must stop, not go on to
    the next set), the command says what the interrupt left behind."""
    def wrap(f: F) -> F:
        @functools.wraps(f)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return f(*args, **kwargs)
            except KeyboardInterrupt:
                raise Interrupted(message) from None
        return run  # type: ignore[return-value]
    return wrap


class _State:
    depth = 0  # nested held() sections
    waiting: int | None = None  # a signal that arrived inside one


def _handler(signum: int, frame: FrameType | None) -> None:
    if _State.depth:
        _State.waiting = signum
        return
    raise KeyboardInterrupt


@contextmanager
def stop_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt (outside held sections)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # A signal ignored on purpose (nohup, a background job of a script) stays so.
    old = {s: signal.signal(s, _handler) for s in _SIGNALS
           if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class held:  # noqa: N801 - used like a function: `with held():`
    """A section no stop signal cuts short; one that arrived during it is raised
    at its end (unless an exception is already on its way).

    Only the main thread's sections count: signals are handled there, so a
    section on another thread would hold the signal back and then raise it in
    that thread, where nobody is waiting for it."""

    __slots__ = ()

    def __enter__(self) -> None:
        if threading.get_ident() == _MAIN:
            _State.depth += 1

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        if threading.get_ident() != _MAIN:
            return
        _State.depth -= 1
        if not _State.depth and _State.waiting is not None:
            _State.waiting = None
            if t is None:
                raise KeyboardInterrupt
