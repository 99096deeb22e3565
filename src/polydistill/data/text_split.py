"""The text-split rule: a plain `text` row becomes a completion-style prompt and its continuation.

The cut is always at a word end (a non-whitespace character followed by whitespace), so the
prompt never ends inside a word and `prompt + continuation == text`; the continuation keeps its
leading whitespace, as a model continuing the prompt would write it. Words are maximal runs of
non-whitespace characters.

- `words`: the prompt is the first floor(fraction x words) words, at least one, and at least
  one word is left for the continuation.
- `characters`: the prompt ends at the last word end at or before fraction x characters, or at
  the first word end when no word ends that early (a long first word).

A text of fewer than two words cannot be split (None).
"""

import math
import re

from polydistill.data.config import TextSplit

_WORD = re.compile(r"\S+")


def split_text(text: str, rule: TextSplit) -> tuple[str, str] | None:
    """(prompt, continuation) of a normalised text, or None when it has fewer than two words."""
    ends = [match.end() for match in _WORD.finditer(text)][:-1]
    if not ends:
        return None
    if rule.unit == "words":
        words = len(ends) + 1
        cut = ends[min(max(1, math.floor(rule.fraction * words)), words - 1) - 1]
    else:
        limit = rule.fraction * len(text)
        early = [end for end in ends if end <= limit]
        cut = early[-1] if early else ends[0]
    return text[:cut], text[cut:]
