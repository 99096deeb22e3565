"""Prompts from a real English text: the GNU GPL version 3, as Debian's `base-files` package
ships it in /usr/share/common-licenses/GPL-3 (the licence itself says "Everyone is permitted to
copy and distribute verbatim copies of this license document").

    python -m benchmarks.gpl_prompts OUT.jsonl [--text /usr/share/common-licenses/GPL-3]

Each row is one sentence of the text without its final mark as the `prompt` (its last
`PROMPT_WORDS` words at most) and that mark with the next `REFERENCE_WORDS` words of the same
part as the `reference` ("...other kinds of works" → ". The licenses for most software and
..."): a completion model continues prose, and the reference is the text's own
continuation. Rows are tagged by the part of the licence they come from (`preamble`, `terms`,
`howto`). The cut is deterministic: the
same text always gives the same file.
"""

import argparse
import json
import re
from pathlib import Path

DEFAULT_TEXT = Path("/usr/share/common-licenses/GPL-3")
PROMPT_WORDS = 40
REFERENCE_WORDS = 12
MIN_PROMPT_WORDS = 6
# The headings that open each part, in order; the text before the first is the title page.
PARTS = (("preamble", "Preamble"), ("terms", "TERMS AND CONDITIONS"))
HOWTO = ("howto", "END OF TERMS AND CONDITIONS")
# A sentence ends at . ! or ? followed by space and a capital, a quote, a bracket or a digit.
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def parts(text: str) -> list[tuple[str, str]]:
    """(tag, prose) per part of the licence, whitespace collapsed to single spaces."""
    lines = text.splitlines()
    heads = [(tag, i) for tag, head in (*PARTS, HOWTO) for i, line in enumerate(lines)
             if line.strip() == head]  # fmt: skip
    if [tag for tag, _ in heads] != [tag for tag, _ in (*PARTS, HOWTO)]:
        raise ValueError("the text does not have the GPL-3's Preamble / TERMS / END OF TERMS")
    bounds = [i + 1 for _, i in heads] + [len(lines)]
    found = []
    for (tag, _), start, end in zip(heads, bounds, bounds[1:], strict=False):
        body = lines[start : end - 1] if tag != HOWTO[0] else lines[start:end]
        found.append((tag, " ".join(" ".join(body).split())))
    return found


def pairs(text: str) -> list[dict[str, str]]:
    """The (prompt, reference, tag) rows of `text`, in reading order."""
    rows = []
    for tag, prose in parts(text):
        sentences = SENTENCE_END.split(prose)
        for i, sentence in enumerate(sentences):
            words = sentence.split()
            following = " ".join(sentences[i + 1 :]).split()
            if len(words) < MIN_PROMPT_WORDS or len(following) < REFERENCE_WORDS:
                continue
            prompt = " ".join(words[-PROMPT_WORDS:])
            # the cut falls before the sentence's last mark, so the reference starts with text
            # that follows no space (a run strips the whitespace around prompts and answers)
            rows.append(
                {
                    "prompt": prompt[:-1],
                    "reference": prompt[-1] + " " + " ".join(following[:REFERENCE_WORDS]),
                    "tag": tag,
                }
            )
    return rows


def write(out: Path, text_path: Path = DEFAULT_TEXT) -> int:
    """Write the rows of `text_path` to `out` (JSONL); returns how many."""
    rows = pairs(text_path.read_text(encoding="utf-8"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(out)
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    args = parser.parse_args(argv)
    print(f"wrote {write(args.out, args.text)} prompts to {args.out}")


if __name__ == "__main__":
    main()
