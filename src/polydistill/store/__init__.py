"""The capture store: teachers' readings captured once, compressed and fingerprinted, read back
as teachers.

    polydistill capture CONFIG --out STORE [--shard i/n]      # then, for sharded captures:
    polydistill capture --merge --out STORE

- `codec`: top-k rows compressed (exact ids in byte planes, one-byte log-prob codes).
- `table`: one block's candidates and every teacher's rows as an Arrow table, and back.
- `shards`: atomic, checksum-named Parquet shard files.
- `manifest`: the capture plan, fingerprints and their comparisons.
- `capture`: the resumable, shardable capture loop and the merge step.
- `cached`: `open_store`, `StoreTeacher` (the `Teacher` protocol from a store), `store_teachers`.
- `command`: the `polydistill capture` command.

Import from the modules (`from polydistill.store.cached import open_store, store_teachers`):
the package itself imports nothing, so the CLI starts without loading `transformers`.
"""
