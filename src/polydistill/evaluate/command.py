"""`polydistill eval`: score a checkpoint on the user's prompts with references, per tag.

    polydistill eval runs/demo --data heldout.jsonl --graders graders.yaml --out metrics.json
    polydistill eval path/to/checkpoint --data data.yaml --split validation
    polydistill eval runs/demo --data heldout.jsonl --lm-eval-task tasks/my_mc.yaml

CHECKPOINT_OR_RUN is a Hugging Face checkpoint folder (`config.json`, weights, tokenizer) or the
output folder of `polydistill run` (its `student/` is scored). `--data` is a data file (JSONL,
Parquet, CSV, or a `save_to_disk` folder, in any layout `polydistill.data` reads), scored whole;
or a YAML file holding a `data:` section (or a data config alone), of which `--split` is scored.
Every prompt needs a reference answer. Rows are grouped by their `tag` (`all` when untagged).
Everything is checked before the model is loaded; the JSON is written atomically.
"""

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from polydistill.chat import encode_text
from polydistill.data import ContextLimit, DataConfig, DataSummary, PromptRecord, read_prompts
from polydistill.data.config import Fractions
from polydistill.data.records import SPLITS
from polydistill.errors import UserError
from polydistill.evaluate.graders import GradersConfig, load_graders
from polydistill.evaluate.harness import evaluate_model
from polydistill.evaluate.lm_harness import lm_eval_scores, task_name
from polydistill.evaluate.prompts import as_records, encode_records
from polydistill.overrides import key_path, read_yaml
from polydistill.staging import write_json

UNTAGGED = "all"
"""The tag of rows without one."""


def checkpoint_folder(target: Path) -> Path:
    """The checkpoint to score: `target` itself, or a run folder's `student/`."""
    if (target / "student" / "config.json").is_file():
        return target / "student"
    if (target / "config.json").is_file():
        return target
    if not target.exists():
        raise UserError(f"eval: no such checkpoint or run folder: {target}")
    raise UserError(
        f"eval: {target} is neither a checkpoint (config.json) nor a run folder (student/)"
    )


def data_config(data: Path) -> tuple[DataConfig, bool]:
    """The data config of `--data`, and whether it is a lone file (then scored whole)."""
    if not data.exists():
        raise UserError(f"eval: no such data file or folder: {data}")
    if data.suffix not in (".yaml", ".yml"):
        none = Fractions(validation=0, test=0)
        return DataConfig(train=[data], fractions=none), True
    try:
        raw = read_yaml(data.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        raise UserError(f"eval: {data}: unreadable YAML: {error}") from None
    section = raw.get("data", raw) if isinstance(raw, dict) else raw
    try:
        return DataConfig.model_validate(section), False
    except ValidationError as error:
        first = error.errors()[0]
        where = key_path(tuple(p for p in first["loc"] if not str(p).startswith("function-")))
        message = first["msg"].removeprefix("Value error, ")
        raise UserError(f"eval: {data}: data.{where}: {message}") from None


def heldout_by_tag(
    data: Path, split: str, limit: int | None, context: Callable[[bool], ContextLimit | None]
) -> tuple[dict[str, list[PromptRecord]], DataSummary]:
    """The prompts to score, by tag (at most `limit` per tag), each with a reference; those
    longer than `context(whole)` (whole: the data is a lone file) dropped and counted."""
    if split not in SPLITS:
        raise UserError(f"eval: --split {split!r} is not one of {', '.join(SPLITS)}")
    config, whole = data_config(data)
    limits = {"checkpoint": limit_} if (limit_ := context(whole)) else {}
    summary = DataSummary()
    by_tag: dict[str, list[PromptRecord]] = defaultdict(list)
    try:
        for record in read_prompts(config, limits, summary):
            if whole or record.split == split:
                rows = by_tag[record.tag or UNTAGGED]
                if limit is None or len(rows) < limit:
                    rows.append(record)
    except UserError as error:
        # Once the stream has ended, `read_prompts` refuses a split left empty (a training run
        # needs them all); a split that is not scored here may be empty. The splits themselves
        # are the config's own, so the prompts scored are those a run held out.
        if "prompts left (" not in str(error):
            raise
    if not by_tag:
        raise UserError(f"eval: {data} has no {split} prompts ({summary.describe()})")
    return as_records(dict(sorted(by_tag.items()))), summary


def context_limit(
    folder: Path, tokenizer: PreTrainedTokenizerBase, split: str, whole: bool, max_new_tokens: int
) -> ContextLimit | None:
    """The model's context as a limit on the prompts scored: prompt tokens plus the longer of
    the reference's tokens and `max_new_tokens` (prompts of other splits are not measured)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise UserError(f"eval: cannot read the config of {folder}: {error}") from None
    positions = getattr(config, "max_position_embeddings", None)
    if not positions:
        return None

    def length(record: PromptRecord) -> int:
        if not whole and record.split != split:
            return 0
        prompt = encode_records(tokenizer, [record], "checkpoint")[0]
        answer = encode_text(tokenizer, record.reference or "")
        return len(prompt) + max(len(answer), max_new_tokens)

    return ContextLimit(length, positions)


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise UserError(f"eval: cannot load the tokenizer of {folder}: {error}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(folder: Path) -> PreTrainedModel:
    """The checkpoint's model, in evaluation mode."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(folder).eval()
    except (OSError, ValueError) as error:
        raise UserError(f"eval: cannot load the checkpoint {folder}: {error}") from None


def evaluate_checkpoint(
    target: Path,
    data: Path,
    graders_file: Path | None = None,
    split: str = "test",
    out: Path | None = None,
    lm_eval_tasks: list[Path] | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    limit: int | None = None,
) -> dict:
    """Score the checkpoint of `target` on `data` per tag (and lm-eval tasks); print a table
    and write `out` as JSON. Every input is checked before the model is loaded."""
    folder = checkpoint_folder(target)
    graders = load_graders(graders_file) if graders_file else GradersConfig()
    tasks = list(lm_eval_tasks or [])
    for task in tasks:
        task_name(task)
    if out is not None and not out.parent.is_dir():
        raise UserError(f"eval: --out {out}: no such folder {out.parent}")
    tokenizer = load_tokenizer(folder)
    heldout, summary = heldout_by_tag(
        data,
        split,
        limit,
        lambda whole: context_limit(folder, tokenizer, split, whole, max_new_tokens),
    )
    model = load_model(folder)
    who = f"checkpoint {folder}"
    scores = evaluate_model(
        model, tokenizer, heldout, max_new_tokens, batch_size, who, graders=graders
    )
    result = {
        "checkpoint": str(folder),
        "data": str(data),
        "split": split,
        "tags": list(heldout),
        "examples": {tag: len(rows) for tag, rows in heldout.items()},
        "graders": {tag: graders.for_tag(tag).kind for tag in heldout},
        "too_long": summary.too_long,
        **scores,
    }
    if tasks:
        result["lm_eval"] = lm_eval_scores(model, tokenizer, tasks, batch_size)
    print_tables(result)
    if out is not None:
        write_json(out, result)
    return result


def print_tables(result: dict) -> None:
    """The scores per tag, and each lm-eval task's metrics, as rich tables."""
    table = Table(title=f"{result['checkpoint']} on {result['data']} ({result['split']})")
    for column in ("tag", "prompts", "grader", "accuracy", "bits/byte"):
        table.add_column(column, justify="left" if column in ("tag", "grader") else "right")
    for tag in result["tags"]:
        table.add_row(
            tag,
            str(result["examples"][tag]),
            result["graders"][tag],
            f"{result['accuracy'][tag]:.1%}",
            f"{result['bits_per_byte'][tag]:.3f}",
        )
    console = Console()
    console.print(table)
    if result["too_long"]:
        console.print(f"{result['too_long']} prompts longer than the model's context not scored")
    if result.get("lm_eval"):
        tasks = Table(title="lm-evaluation-harness")
        for column in ("task", "metric", "value"):
            tasks.add_column(column, justify="right" if column == "value" else "left")
        for name, metrics in result["lm_eval"].items():
            for metric, value in metrics.items():
                tasks.add_row(name, metric, f"{value:.4f}")
        console.print(tasks)
