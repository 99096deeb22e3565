"""Gateway settings: prices, default caps and limits, read from an optional YAML file.

Example (`polydistill serve MODEL_DIR --config gateway.yaml`)::

    prices:                      # US dollars per million tokens, per served model id
      student: {input: "0.50", output: "1.50"}
    caps:                        # defaults for keys created without their own caps
      max_tokens: 1024
      max_n: 4
      max_logprobs: 5            # completions `logprobs` (the API allows at most 5)
      max_top_logprobs: 20       # chat `top_logprobs` (the API allows at most 20)
    max_body_bytes: 1000000
    rate_window_s: 60            # length of the rpm/tpm window
    reservation_ttl_s: 1800      # reservations not refreshed for this long are swept as dead
    sweep_interval_s: 60         # heartbeat of live reservations, retries and sweep; at most
                                 # a third of reservation_ttl_s
    request_timeout_s: 600       # deadline of every request: a non-streamed generation still
                                 # running then is a 504, unbilled; a stream is cut off and
                                 # billed for what it produced
    auth_cache_s: 5              # how long a valid key is remembered (revocation at admission
                                 # is immediate regardless)
    torch_threads: 4             # CPU threads of the in-process model (default: torch's choice;
                                 # fewer than the cores when other processes share them)

A model without a price is served at no charge (a warning says so at start-up).
"""

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from polydistill.errors import UserError
from polydistill.serve.metering.money import Price, usd_to_micros


class PriceSetting(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str | float | int = "0"
    output: str | float | int = "0"


class Caps(BaseModel):
    """Per-request caps against model extraction: the defaults for keys without their own."""

    model_config = ConfigDict(extra="forbid")
    max_tokens: int = Field(default=2048, ge=1)
    max_n: int = Field(default=4, ge=1, le=128)
    max_logprobs: int = Field(default=5, ge=0, le=5)
    max_top_logprobs: int = Field(default=20, ge=0, le=20)


class GatewaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prices: dict[str, PriceSetting] = Field(default_factory=dict)
    caps: Caps = Field(default_factory=Caps)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    rate_window_s: int = Field(default=60, ge=1)
    reservation_ttl_s: int = Field(default=1800, ge=10)
    request_timeout_s: int = Field(default=600, ge=1)
    sweep_interval_s: int = Field(default=60, ge=1)
    max_batch_size: int = Field(default=8, ge=1, le=256)
    auth_cache_s: float = Field(default=5.0, ge=0.0, le=300.0)
    torch_threads: int | None = Field(default=None, ge=1, le=1024)

    @model_validator(mode="after")
    def _heartbeat_outpaces_the_sweep(self) -> "GatewaySettings":
        # A live request's reservation is refreshed every sweep_interval_s; with fewer than
        # three refreshes per TTL, one slow heartbeat would let another replica sweep it.
        if self.sweep_interval_s * 3 > self.reservation_ttl_s:
            raise ValueError("sweep_interval_s must be at most a third of reservation_ttl_s")
        return self


def load_settings(path: Path | None) -> GatewaySettings:
    """Settings from a YAML file, or the defaults when `path` is None."""
    if path is None:
        return GatewaySettings()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return GatewaySettings.model_validate(raw)
    except OSError as error:
        raise UserError(f"cannot read settings file {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise UserError(f"settings file {path} is not valid YAML: {error}") from error
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")  # a check across fields
        raise UserError(
            f"settings file {path}: {where + ': ' if where else ''}{message}"
        ) from error


def price_of(settings: GatewaySettings, model_id: str) -> Price:
    """The price of `model_id` in micro-dollars per million tokens (zero when unpriced)."""
    setting = settings.prices.get(model_id)
    if setting is None:
        return Price()
    return Price(
        usd_to_micros(setting.input, f"input price of {model_id}"),
        usd_to_micros(setting.output, f"output price of {model_id}"),
    )
