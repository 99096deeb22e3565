"""What every section of the run config is made of: the `Strict` base and the value types.

    class MySection(Strict):
        steps: Positive = 100
        \"\"\"What the field means (the docstring is the field's documentation: the README's
        configuration reference is generated from it, `config.documentation`).\"\"\"

Kept free of any other config module, so that each section's module can import it.
"""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

Family = Literal["gemma", "qwen", "gpt-oss"]
# The domains a world teacher trains on (the specialists world's); the student's prompts are
# tagged records of any source, and its settings name free-form tags.
Domain = Literal["arithmetic", "facts", "strings"]
TagName = Annotated[str, Field(min_length=1)]
TokenizerStyle = Literal["gemma", "qwen", "gpt-oss", "student"]
LossKind = Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "tv"]
Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]

LaxPath = Annotated[Path, Field(strict=False)]
"""A path from a YAML string: a path is the one value YAML cannot spell as its own type, and
strict mode takes no str for a Path otherwise."""


class Strict(BaseModel):
    """Every config section: unknown keys are errors, and values are taken as their own YAML
    types only (strict), so that `true` is never a number, nor `1` a boolean, nor `"3"` a count.
    Each field's docstring is its documentation."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, strict=True, use_attribute_docstrings=True
    )


def gguf_file_or_folder(path: Path) -> bool:
    """True for an existing GGUF file, False for an existing folder (whose contents the caller
    checks); anything else is a `ValueError` naming the path."""
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ValueError(f"no such GGUF file: {path}")
        return True
    if not path.is_dir():
        raise ValueError(f"no such directory: {path}")
    return False


def error_at(location: tuple[str, ...], message: str) -> ValidationError:
    """An error at `location` below the field being validated (pydantic prefixes the field)."""
    detail = InitErrorDetails(
        type=PydanticCustomError("invalid", "{message}", {"message": message}),
        loc=location,
        input=None,
    )
    return ValidationError.from_exception_data("config", [detail])
