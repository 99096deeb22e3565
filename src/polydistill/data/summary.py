"""What reading a prompt set kept and dropped, and why: counts for the run's metrics and errors."""

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class DataSummary:
    """Counts filled in while the prompts stream; complete once the stream is exhausted."""

    rows: int = 0
    """Rows read from the files."""
    empty: int = 0
    """Rows without a prompt (null or only whitespace), dropped."""
    unsplittable: int = 0
    """`text` rows of fewer than two words, which cannot be split, dropped."""
    duplicates: int = 0
    """Rows whose normalised prompt an earlier row had, dropped (the first one is kept)."""
    over_limit: int = 0
    """Rows past their split's `max_prompts`, dropped."""
    too_long: int = 0
    """Prompts longer than some model's context, dropped."""
    too_long_for: Counter[str] = field(default_factory=Counter)
    """Per model: prompts longer than its context (a prompt counts for each model it exceeds)."""
    kept: Counter[str] = field(default_factory=Counter)
    """Per split: prompts kept."""
    tags: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    """Per (split, tag): prompts kept."""
    layouts: Counter[str] = field(default_factory=Counter)
    """Per layout: prompts kept."""

    def metrics(self) -> dict[str, int]:
        """Flat `data/...` counts, for the run's metrics."""
        flat = {
            f"data/{name}": getattr(self, name)
            for name in ("rows", "empty", "unsplittable", "duplicates", "over_limit", "too_long")
        }
        flat |= {f"data/too_long_for/{model}": n for model, n in sorted(self.too_long_for.items())}
        flat |= {f"data/kept/{split}": n for split, n in sorted(self.kept.items())}
        flat |= {f"data/layout/{layout}": n for layout, n in sorted(self.layouts.items())}
        return flat

    def describe(self) -> str:
        """One line: rows read, each reason for dropping that occurred, and prompts kept."""
        dropped = [
            f"{getattr(self, name)} {name.replace('_', ' ')}"
            for name in ("empty", "unsplittable", "duplicates", "over_limit")
            if getattr(self, name)
        ]
        dropped += [f"{n} too long for {model}" for model, n in sorted(self.too_long_for.items())]
        kept = ", ".join(f"{n} {split}" for split, n in sorted(self.kept.items())) or "none"
        return f"{self.rows} rows read; dropped: {', '.join(dropped) or 'none'}; kept: {kept}"
