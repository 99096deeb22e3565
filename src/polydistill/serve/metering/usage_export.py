"""The usage ledger as CloudEvents-style JSON objects or CSV rows, for `polydistill usage`.

An event: {"specversion": "1.0", "id": request id, "source": "polydistill/gateway",
"subject": key name, "type": "polydistill.usage.v1", "time": RFC 3339, "datacontenttype":
"application/json", "data": {model, endpoint, prompt_tokens, completion_tokens, cost_micros,
cost_usd (exact decimal string), streamed, finish}}.
"""

from collections.abc import Iterator
from typing import Any

from polydistill.serve.metering.money import micros_to_usd
from polydistill.serve.metering.timeutil import iso_time

CSV_COLUMNS = (
    "id", "time", "key", "model", "endpoint", "prompt_tokens", "completion_tokens",
    "cost_micros", "cost_usd", "streamed", "finish",
)  # fmt: skip


def usage_event(row: dict[str, Any]) -> dict[str, Any]:
    """One ledger row as a CloudEvents-style object."""
    return {
        "specversion": "1.0",
        "id": row["request_id"],
        "source": "polydistill/gateway",
        "subject": row["key_name"],
        "type": "polydistill.usage.v1",
        "time": iso_time(row["created_ms"]),
        "datacontenttype": "application/json",
        "data": {
            "model": row["model"],
            "endpoint": row["endpoint"],
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "cost_micros": row["cost_micros"],
            "cost_usd": micros_to_usd(row["cost_micros"]),
            "streamed": bool(row["streamed"]),
            "finish": row["finish"],
        },
    }


def usage_csv_rows(rows: list[dict[str, Any]]) -> Iterator[list[Any]]:
    """The header, then one list per ledger row."""
    yield list(CSV_COLUMNS)
    for row in rows:
        yield [
            row["request_id"], iso_time(row["created_ms"]), row["key_name"], row["model"],
            row["endpoint"], row["prompt_tokens"], row["completion_tokens"],
            row["cost_micros"], micros_to_usd(row["cost_micros"]), bool(row["streamed"]),
            row["finish"],
        ]  # fmt: skip
