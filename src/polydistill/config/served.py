"""The `teachers[].served` section of a run config: a teacher behind one or more
OpenAI-compatible servers of the same model (vLLM), read through `served.served_teacher`.

    teachers:
      - name: qwen
        family: qwen
        served:
          urls: [http://10.0.0.5:8000, http://10.0.0.6:8000]
          model: Qwen/Qwen3-8B
          tokenizer: /models/qwen3-8b-tokenizer
          api_key_env: QWEN_API_KEY

The key itself never goes in a config: `api_key_env` names the environment variable holding it.
Imports nothing heavy: the run config (`polydistill.config`) declares its teachers with it.
"""

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from polydistill.config.fields import Strict, gguf_file_or_folder

# a fast tokenizer's own file, or a checkpoint's config beside whatever tokenizer it has
TOKENIZER_FILES = ("tokenizer.json", "config.json")


class ServedConfig(Strict):
    """Where a served teacher runs and how hard to push its servers."""

    tokenizer: Annotated[Path, Field(strict=False)]
    """The served model's tokenizer, here: a folder with `tokenizer.json` (a checkpoint folder
    will do) or a GGUF file. Prompts are rendered and answers decoded with it, and every server's
    tokenizer is probed against it before use."""
    urls: Annotated[list[str], Field(min_length=1)] | None = None
    """Base URLs (without `/v1`) of servers of the same model, sharing the work; unset: the
    comma-separated `POLYDISTILL_TEACHER_<NAME>_URL` of the environment."""
    model: str | None = None
    """The served model id (`/v1/models`); unset: each server's only model (the same on all)."""
    api_key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    """The environment variable holding the servers' API key (sent as a bearer token); unset:
    `POLYDISTILL_TEACHER_<NAME>_API_KEY` if set, else no key."""
    concurrency: Annotated[int, Field(gt=0)] = 4
    """Requests in flight on each server at once."""
    retries: Annotated[int, Field(ge=0)] = 5
    """Further tries of a request after an unreachable server, a 5xx or a 429, each on another
    server where there is one."""
    backoff_s: Annotated[float, Field(ge=0)] = 0.5
    """A server that failed a try rests this long, doubling with its consecutive failures."""
    timeout_s: Annotated[float, Field(gt=0)] = 300.0
    """Seconds one request may take."""
    batch_size: Annotated[int, Field(gt=0)] = 16
    """Answers scored in one request: small enough that every server's slots get work."""

    @field_validator("tokenizer")
    @classmethod
    def _has_tokenizer(cls, path: Path) -> Path:
        if gguf_file_or_folder(path):
            return path
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise ValueError(f"no tokenizer.json (nor a checkpoint's config.json) in {path}")
        return path

    @field_validator("urls")
    @classmethod
    def _are_server_urls(cls, urls: list[str] | None) -> list[str] | None:
        if urls is None:
            return None
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r} is not an http(s) URL")
            if parts.username is not None or parts.password is not None:
                # Credentials in a config end up in outputs; the key has its own way in.
                raise ValueError(
                    f"{parts.scheme}://{parts.hostname}...: no credentials in a URL; "
                    "name the variable holding the key in api_key_env"
                )
        cleaned = [url.rstrip("/") for url in urls]
        repeated = sorted({url for url in cleaned if cleaned.count(url) > 1})
        if repeated:
            raise ValueError(f"server listed twice: {', '.join(repeated)}")
        return cleaned
