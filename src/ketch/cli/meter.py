"""The terminal meter, drawn by rich.

Only `cli.termprogress.TermProgress` imports this, and only once stderr is known to be
a terminal: cron runs and `ketch cat-file | mysql` never load rich. The line
reads as the hand-drawn one did: `Saving: 4 files, 16.0 MB, 52.1 MB/s, 37.5%,
ETA 0:12`, with % and ETA once a total is known.
"""

from __future__ import annotations

from rich.console import Console
from rich.live import Live
from rich.progress import Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from ketch.text import plural

# rich puts a space between columns: each column ends in its own comma, and
# none but the last is ever empty (an empty one would leave two spaces).


# Seconds of counting before an ETA is worth showing.
_ETA_AFTER = 2.0


def _rate(task: Task) -> float:
    """Bytes a second since the meter started (steadier than a recent window)."""
    return task.completed / max(task.elapsed or 0.0, 1e-6)


def _has_total(task: Task) -> bool:
    # An index's stale total is smaller than what is read: no 104%.
    return bool(task.total) and task.completed <= (task.total or 0)


class _Amount(ProgressColumn):
    def render(self, task: Task) -> Text:
        files = task.fields["files"]
        counted = f"{plural(files, 'file', grouped=True)}, " if files else ""
        return Text(f"{counted}{task.completed / 1e6:,.1f} MB,")


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{_rate(task) / 1e6:,.1f} MB/s" + ("," if _has_total(task) else ""))


class _PercentEta(ProgressColumn):
    def render(self, task: Task) -> Text:
        if not _has_total(task) or task.total is None:
            return Text("")
        percent = f"{100.0 * task.completed / task.total:.1f}%"
        left = task.total - task.completed
        rate = _rate(task)
        if left > 0 and ((task.elapsed or 0.0) < _ETA_AFTER or rate <= 0):
            # A rate from the first moments (a few tiny files) promises days.
            return Text(f"{percent}, ETA -:--")
        eta = int(left / rate) if left > 0 else 0
        return Text(f"{percent}, ETA {eta // 60}:{eta % 60:02d}")


class Meter:
    """One line of progress on stderr; messages print above it."""

    _drawing: Meter | None = None  # one meter at a time: a new one ends the last

    def __init__(self, label: str) -> None:
        console = Console(stderr=True, markup=False, emoji=False, highlight=False)
        # Redrawn when the counts are pushed (TermProgress does that at most a few
        # times a second), not by a thread of its own; stdout and stderr are left
        # alone: stdout may be split's data, stderr lines go through say().
        self._bar = Progress(TextColumn("{task.description}:", markup=False), _Amount(),
                             _Rate(), _PercentEta(), console=console, auto_refresh=False,
                             redirect_stdout=False, redirect_stderr=False)
        self._task = self._bar.add_task(label, total=None, files=0)
        self._done = False

    def set_total(self, total: int | None) -> None:
        self._bar.update(self._task, total=total)

    def show(self, nbytes: int, nfiles: int, *, draw: bool = True) -> None:
        if self._done:
            return
        self._bar.update(self._task, completed=nbytes, files=nfiles)
        if Meter._drawing is not self:
            if Meter._drawing is not None:
                Meter._drawing.close()
            Meter._drawing = self
            self._bar.start()  # draws
        elif draw:
            self._bar.refresh()

    def say(self, message: str) -> None:
        """A line above the meter (soft-wrapped: a long path stays one line)."""
        self._bar.console.print(Text(message), soft_wrap=True)

    def close(self, nbytes: int | None = None, nfiles: int | None = None) -> None:
        """The last figures, and the line ends (again: nothing)."""
        if self._done:
            return
        if nbytes is not None and nfiles is not None:
            self.show(nbytes, nfiles, draw=False)  # stop() draws the last line
        self._done = True
        if Meter._drawing is self:
            Meter._drawing = None
        self._bar.stop()


class StatusLine:
    """One line saying what is being done (`checking ...…`), gone once closed."""

    def __init__(self) -> None:
        self._live = Live(console=Console(stderr=True, markup=False, emoji=False,
                                          highlight=False),
                          transient=True, auto_refresh=False,
                          redirect_stdout=False, redirect_stderr=False)

    def show(self, text: str) -> None:
        self._live.start()  # once: starting a started Live does nothing
        self._live.update(Text(text), refresh=True)

    def close(self) -> None:
        self._live.stop()
