"""Wall-clock time in integer milliseconds, the unit of every stored time, and its parsing."""

import re
import time
from datetime import UTC, datetime

from polydistill.errors import UserError

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def duration_seconds(text: str) -> int:
    """ "90s", "15m", "24h", "7d", "2w" as seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise UserError(f"{text!r} is not a duration such as 90s, 15m, 24h or 7d")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def parse_time_ms(text: str, now: int, future: bool) -> int:
    """An ISO-8601 date or time (UTC unless it says otherwise), or a duration counted from
    `now` into the future (`future`) or the past."""
    if _DURATION.match(text.strip()):
        delta = duration_seconds(text) * 1000
        return now + delta if future else now - delta
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as error:
        raise UserError(f"{text!r} is neither an ISO date/time nor a duration like 7d") from error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def iso_time(ms: int) -> str:
    """RFC 3339 UTC time with milliseconds, e.g. 2026-11-01T12:00:00.123Z."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
