"""A terminal progress bar for one job (`job.wait(progress=True)`, `errand jobs show --follow`)."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

_STATE_STYLE = {"done": "green", "failed": "red", "cancelled": "yellow"}


class ProgressBar:
    """Draws `title [#####.....] 42% state: message` on stderr until the block ends."""

    def __init__(self, title: str, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
            console=console or Console(stderr=True), transient=False)
        self._bar = self._progress.add_task(title, total=100, status="")

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def show(self, percent: int, message: str | None, state: str) -> None:
        style = _STATE_STYLE.get(state, "cyan")
        status = f"[{style}]{state}[/]" + (f": {message}" if message else "")
        self._progress.update(self._bar, completed=percent, status=status)
