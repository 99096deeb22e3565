"""Progress where stderr is a log file: a line per tenth of each task, not silence until the
end; on a terminal, only the live bars."""

import io

from rich.console import Console

from polydistill import progress


def _run(monkeypatch, terminal: bool) -> str:
    out = io.StringIO()
    fake = Console(file=out, force_terminal=terminal, width=120)
    monkeypatch.setattr(progress, "console", fake)
    with progress.progress_bars() as bars:
        task = bars.add_task("answers gemma", total=200, rate="")
        for _ in range(50):
            bars.update(task, advance=4, rate="1,234 tok/s")
        other = bars.add_task("scores gemma", total=3, rate="")
        for _ in range(3):
            bars.advance(other, 1)
    return out.getvalue()


def test_a_piped_log_gets_a_line_per_tenth(monkeypatch) -> None:
    text = _run(monkeypatch, terminal=False)
    lines = [line for line in text.splitlines() if "answers gemma:" in line]
    assert len(lines) == progress.STEPS_LOGGED, text
    assert "answers gemma: 20/200 1,234 tok/s" in lines[0]
    assert "answers gemma: 200/200" in lines[-1]
    # a task of 3 rows passes a tenth at each row (3, 6, then 10 tenths)
    assert sum("scores gemma:" in line for line in text.splitlines()) == 3


def test_a_terminal_gets_the_bars_alone(monkeypatch) -> None:
    text = _run(monkeypatch, terminal=True)
    assert "answers gemma:" not in text and "answers gemma" in text
