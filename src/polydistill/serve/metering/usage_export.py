"""The usage ledger as CloudEvents-style JSON objects or CSV rows, for `polydistill usage`.

An event: {"specversion": "1.0", "id": request id, "source": "polydistill/gateway",
"subject": key name, "type": "polydistill.usage.v1", "time": RFC 3339, "datacontenttype":
"application/json", "data": {model, endpoint, prompt_tokens, completion_tokens, cost_micros,
cost_usd (exact decimal string), streamed, finish, notices}}; `notices` lists the licences
whose notices and use restrictions applied to the model that answered (its signed lineage's
teachers'), the CSV column joins them with `;`.
"""

from collections.abc import Iterator
from typing import Any

from polydistill.serve.metering.money import micros_to_usd
from polydistill.serve.metering.timeutil import iso_time

CSV_COLUMNS = (
    "id", "time", "key", "model", "endpoint", "prompt_tokens", "completion_tokens",
    "cost_micros", "cost_usd", "streamed", "finish", "notices",
)  # fmt: skip


def _notices(row: dict[str, Any]) -> list[str]:
    return row["notices"].split(",") if row.get("notices") else []


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
            "notices": _notices(row),
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
            row["finish"], ";".join(_notices(row)),
        ]  # fmt: skip
