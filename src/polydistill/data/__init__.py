"""The user's prompts: JSONL, Parquet, CSV or `datasets` folders, in the layouts users have.

    from polydistill.data import DataConfig, DataSummary, read_prompts
    summary = DataSummary()
    records = read_prompts(DataConfig(train="prompts.jsonl"), limits, summary)

Modules, in the order a row flows through them: `config` (the `data:` section), `formats`
(streamed rows of each file format), `layouts` (messages / prompt / text rows to a prompt,
reference and tag; `text_split` cuts a text), `records` (`PromptRecord`, its normalisation and
stable id), `splits` (hashed train/validation/test assignment), `lengths` (context limits per
model), `summary` (counts of what was kept and dropped), `source` (all of it as one stream).
The world is another source of the same records (`polydistill.world.prompts`); `data` never
imports it.
"""

from polydistill.data.config import DataConfig
from polydistill.data.lengths import ContextLimit
from polydistill.data.records import PromptRecord, Turn
from polydistill.data.source import read_prompts
from polydistill.data.summary import DataSummary

__all__ = ["ContextLimit", "DataConfig", "DataSummary", "PromptRecord", "Turn", "read_prompts"]
