"""Rich progress bars for every long step: counts, tokens/s and ETA.

    with progress_bars() as bars:
        task = bars.add_task("answers gemma", total=len(prompts), rate="")
        bars.update(task, advance=8, rate="1,200 tok/s")

On a terminal the bars redraw in place. Where stderr is not a terminal (a log file, `nohup`,
CI), Rich draws a progress display only once, when it stops; a step of many minutes would leave
the log silent, so there each task also writes a line whenever it passes another tenth.
"""

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)

STEPS_LOGGED = 10
"""Lines a task writes where stderr is not a terminal: one per tenth."""


class _LoggedProgress(Progress):
    """A `Progress` that writes a line per tenth of each task where the console is not a
    terminal (a live display is only drawn at the end there)."""

    def __init__(self, *columns, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*columns, **kwargs)
        self._tenths: dict[TaskID, int] = {}

    def update(self, task_id: TaskID, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().update(task_id, **kwargs)
        self._log_tenth(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log_tenth(task_id)

    def _log_tenth(self, task_id: TaskID) -> None:
        if self.console.is_terminal:
            return
        with self._lock:
            task = self._tasks[task_id]
            if not task.total:
                return
            tenth = int(STEPS_LOGGED * min(task.completed / task.total, 1.0))
            if tenth <= self._tenths.get(task_id, 0):
                return
            self._tenths[task_id] = tenth
            line = f"{task.description}: {task.completed:,.0f}/{task.total:,.0f}"
            rate = task.fields.get("rate")
        self.console.log(f"{line} {rate}" if rate else line)


def progress_bars() -> Progress:
    """A progress display; tasks carry a `rate` field (e.g. "12,300 tok/s")."""
    return _LoggedProgress(
        TextColumn("[bold]{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>14}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
