"""Cross-tokenizer alignment: teacher tokens and student tokens matched byte for byte.

- `tokenbytes`: the exact UTF-8 bytes of every vocabulary entry of a fast tokenizer (byte-level,
  `▁` and `<0xNN>` spellings), and a round-trip check so that a lossy normaliser is an error
  naming the teacher, never a silent misalignment.
- `chunks`: cuts two tokenizations of one text wherever both have a boundary at the same byte,
  in linear time; each chunk is a run of teacher and student tokens covering identical bytes.
- `render`: prompt + completion + end-of-turn through each side's chat template; only the
  completion is aligned, markup and one-sided specials stay out of the loss.
- `vocabmap`: teacher token -> longest student token its bytes start with; cached on disk.
- `project`: a teacher's top-k rows -> the student's `SparseTargets` along the alignment.
"""
