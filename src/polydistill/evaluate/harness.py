"""Scoring a checkpoint on held-out prompts, per tag.

    scores = evaluate_model(model, tokenizer, {"math": records, ...}, max_new_tokens=64,
                            batch_size=32, who="student", graders=GradersConfig(...))
    scores["accuracy"]["math"], scores["bits_per_byte"]["math"], scores["params"]

Two numbers per tag:
- accuracy: the share of prompts whose greedy answer (own template, `generation`) the tag's
  grader (`graders`; without graders, exact match after stripping, the world's rule) accepts;
- bits per byte of the reference answers given the prompt (`bits`), which compares models whose
  tokenizers differ.
Held-out rows are `PromptRecord`s with a `reference`, or world `Example`s (`prompts.as_records`).
"""

from collections.abc import Mapping, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from polydistill.data.records import PromptRecord
from polydistill.errors import UserError
from polydistill.evaluate.bits import reference_bits
from polydistill.evaluate.generation import Progress, greedy_answers
from polydistill.evaluate.graders import GradersConfig, grade
from polydistill.evaluate.prompts import Question, as_records, prompt_text

Heldout = Mapping[str, Sequence[PromptRecord | Question]]


def graded_answers(
    records: Sequence[PromptRecord], answers: Sequence[str], graders: GradersConfig, tag: str
) -> list[bool]:
    """Each answer graded against its record's reference by the tag's grader."""
    grader = graders.for_tag(tag)
    verdicts = []
    for record, answer in zip(records, answers, strict=True):
        try:
            verdicts.append(grade(grader, answer, record.reference or "", prompt_text(record)))
        except UserError as error:
            raise UserError(f"tag {tag!r}, {record.origin or record.id}: {error}") from None
    return verdicts


def exact_match(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Heldout,
    max_new_tokens: int,
    batch_size: int,
    who: str,
    on_batch: Progress | None = None,
    *,
    graders: GradersConfig | None = None,
) -> dict[str, float]:
    """Per tag, the share of prompts whose greedy answer the tag's grader accepts."""
    model.eval()
    graders = graders or GradersConfig()
    accuracy: dict[str, float] = {}
    for tag, records in as_records(examples).items():
        answers = greedy_answers(
            model, tokenizer, records, max_new_tokens, batch_size, who, on_batch
        )
        accuracy[tag] = sum(graded_answers(records, answers, graders, tag)) / len(records)
    return accuracy


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    heldout: Heldout,
    max_new_tokens: int,
    batch_size: int,
    who: str,
    on_batch: Progress | None = None,
    *,
    graders: GradersConfig | None = None,
) -> dict:
    """Accuracy and bits per byte per tag, and the parameter count."""
    records = as_records(heldout)
    accuracy = exact_match(
        model, tokenizer, records, max_new_tokens, batch_size, who, on_batch, graders=graders
    )
    bits_per_byte: dict[str, float] = {}
    for tag, rows in records.items():
        bits, size = reference_bits(model, tokenizer, rows, batch_size, f"{who}, tag {tag!r}")
        bits_per_byte[tag] = bits / size
    return {
        "accuracy": accuracy,
        "bits_per_byte": bits_per_byte,
        "params": sum(p.numel() for p in model.parameters()),
    }
