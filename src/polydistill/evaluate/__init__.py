"""Evaluation of a checkpoint on held-out prompts with reference answers, per tag.

    from polydistill.evaluate import evaluate_model, GradersConfig
    scores = evaluate_model(model, tokenizer, {"math": records}, max_new_tokens=64,
                            batch_size=32, who="student", graders=GradersConfig(...))

Modules: `prompts` (records and world examples as prompt ids in a model's own template),
`generation` (batched greedy answers), `graders` (exact, normalised, regex, numeric, choice;
per tag), `bits` (bits per byte of the references), `harness` (`evaluate_model`: accuracy and
bits per byte per tag), `lm_harness` (lm-evaluation-harness tasks from local YAML, offline),
`command` (`polydistill eval`).
"""

from polydistill.evaluate.bits import reference_bits
from polydistill.evaluate.generation import Progress, greedy_answers
from polydistill.evaluate.graders import Grader, GradersConfig, grade, load_graders
from polydistill.evaluate.harness import evaluate_model, exact_match
from polydistill.evaluate.prompts import as_records

__all__ = [
    "Grader",
    "GradersConfig",
    "Progress",
    "as_records",
    "evaluate_model",
    "exact_match",
    "grade",
    "greedy_answers",
    "load_graders",
    "reference_bits",
]
