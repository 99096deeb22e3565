"""Money as integers: micro-dollars (1 USD = 1,000,000 micros), never floats.

Prices are micro-dollars per million tokens, so a request's cost is an exact integer ratio,
rounded up to the next micro-dollar once per request. Rounding up keeps the reservation of a
worst case an upper bound of the settled cost: `request_cost` is monotone in both counts.
"""

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from polydistill.errors import UserError

MICROS_PER_USD = 1_000_000
TOKENS_PER_PRICE_UNIT = 1_000_000


@dataclass(frozen=True)
class Price:
    """Micro-dollars per million input (prompt) and output (completion) tokens."""

    input_micros_per_million: int = 0
    output_micros_per_million: int = 0


def usd_to_micros(amount: str | int | Decimal, what: str = "amount") -> int:
    """Parse a dollar amount such as "12.50" exactly; reject negatives and sub-micro digits."""
    try:
        value = Decimal(str(amount).strip())
    except InvalidOperation as error:
        raise UserError(f"{what} {amount!r} is not a number of dollars") from error
    if not value.is_finite() or value < 0:
        raise UserError(f"{what} {amount!r} must be a finite, non-negative number of dollars")
    micros = value * MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise UserError(f"{what} {amount!r} has more than 6 decimal places")
    return int(micros)


def micros_to_usd(micros: int) -> str:
    """An exact decimal string: 1234567 -> "1.234567"."""
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}{whole}.{fraction:06d}"


def request_cost(price: Price, prompt_tokens: int, completion_tokens: int) -> int:
    """Micro-dollars for one request, rounded up."""
    scaled = (
        prompt_tokens * price.input_micros_per_million
        + completion_tokens * price.output_micros_per_million
    )
    return -(-scaled // TOKENS_PER_PRICE_UNIT)
