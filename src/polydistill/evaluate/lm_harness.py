"""lm-evaluation-harness tasks from local YAML files, run on an already-loaded model, offline.

    scores = lm_eval_scores(model, tokenizer, [Path("tasks/my_mc.yaml")], batch_size=8)
    scores["my_mc"]["acc,none"]

Each YAML is an ordinary lm-eval task (its `task:` name is the key of its scores); its data is
local, e.g. `dataset_path: json` with `dataset_kwargs: {data_files: {test: data.jsonl}}` (paths
relative to the working directory, as `datasets` reads them). The model and tokenizer are wrapped
in lm-eval's `HFLM` as they are, so the scores are those of the weights in memory; datasets and
the hub are kept offline, and bootstrap standard errors are skipped (`bootstrap_iters=0`).
"""

import os
from collections.abc import Sequence
from pathlib import Path

import yaml
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from polydistill.errors import UserError


class _TaskLoader(yaml.SafeLoader):
    """YAML of lm-eval tasks: `!function` and other tags read as nothing (only `task:` is used)."""


_TaskLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def task_name(path: Path) -> str:
    """The `task:` name of a task YAML; a missing file or name is a `UserError`."""
    if not path.is_file():
        raise UserError(f"lm-eval task: no such file: {path}")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskLoader)
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        raise UserError(f"lm-eval task {path}: unreadable YAML: {error}") from None
    name = raw.get("task") if isinstance(raw, dict) else None
    if not isinstance(name, str) or not name:
        raise UserError(f"lm-eval task {path}: no `task:` name")
    return name


def lm_eval_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[Path],
    batch_size: int,
    limit: int | None = None,
    chat: bool = False,
) -> dict[str, dict[str, float]]:
    """Each task's numeric metrics (`acc,none`, `exact_match,none`, ...) on `model`.

    `chat`: prompts go through the tokenizer's chat template (lm-eval's `apply_chat_template`).
    """
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError(
            "lm-eval tasks need lm-evaluation-harness: pip install 'polydistill[eval]'"
        ) from None
    names = [task_name(path) for path in tasks]
    folders = sorted({str(path.resolve().parent) for path in tasks})
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    try:
        results = simple_evaluate(
            model=wrapped,
            tasks=names,
            task_manager=TaskManager(include_path=folders),
            limit=limit,
            bootstrap_iters=0,
            log_samples=False,
            apply_chat_template=chat,
        )
    except (ValueError, KeyError, FileNotFoundError) as error:
        raise UserError(f"lm-eval tasks {', '.join(names)}: {error}") from None
    return {
        name: {
            metric: float(value)
            for metric, value in results["results"][name].items()
            if isinstance(value, int | float) and "_stderr" not in metric
        }
        for name in names
    }
