"""The gateway benchmark's section of RESULTS.md, rendered from its JSON
(`benchmarks/gateway.py` measures; `benchmarks.results_md` renders through `markdown`).
"""

from typing import Any

from benchmarks import results_md
from benchmarks.http_load import (
    MAX_CONNECTIONS,
    MAX_TOKENS,
    RACE_AFFORDABLE,
    RACE_REQUESTS,
    RATES,
    SATURATION_CONNECTIONS,
)

SECTION = "## Gateway (benchmarks/gateway.py)"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _label(s: dict) -> str:
    if s["gateway"] == "polydistill":
        return f"polydistill, {s['database']}, {s['workers']} worker{'s' * (s['workers'] > 1)}"
    if s["gateway"] == "litellm":
        return f"LiteLLM, {s['workers']} worker{'s' * (s['workers'] > 1)}"
    return "upstream alone (mock, no gateway)"


def _load_table(scenarios: list[dict]) -> list[str]:
    lines = [
        "| scenario | offered req/s | achieved req/s | overhead p50 ms | p95 ms | p99 ms "
        "| latency p50 ms | p99 ms | not 200 | not sent | ledger rows = 200s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in scenarios:
        metered = "–"
        if "ledger_rows" in s:
            metered = f"{s['ledger_rows']} = {s['ok_responses']}" + (
                "" if s["ledger_rows"] == s["ok_responses"] else " ✗"
            )
        points = [("one at a time (1 conn)", s["serial"])]
        points += [(str(r["offered_per_s"]), r) for r in s["rates"]]
        points.append((f"saturation ({s['saturation']['connections']} conns)", s["saturation"]))
        for offered, r in points:
            bad = str(sum(n for code, n in r["statuses"].items() if code != "200") + r["failed"])
            kinds = {**{k: n for k, n in r["statuses"].items() if k != "200"}, **r["failures"]}
            if kinds:
                bad += " (" + ", ".join(f"{k} × {n}" for k, n in sorted(kinds.items())) + ")"
            lines.append(
                f"| {_label(s)} | {offered} | {r['achieved_per_s']:.0f} "
                f"| {_ms(r['overhead_p50_ms'])} | {_ms(r['overhead_p95_ms'])} "
                f"| {_ms(r['overhead_p99_ms'])} | {_ms(r['latency_p50_ms'])} "
                f"| {_ms(r['latency_p99_ms'])} | {bad} | {r['not_sent']} | {metered} |"
            )
    return lines


def _sustained(r: dict) -> bool:
    """The offered rate was served: nothing left unsent, 98 % of it answered with a 200."""
    return r["not_sent"] == 0 and r["achieved_per_s"] >= 0.98 * r["offered_per_s"]


def _sustained_line(scenarios: list[dict]) -> str:
    parts = []
    for s in scenarios:
        held = [str(r["offered_per_s"]) for r in s["rates"] if _sustained(r)]
        parts.append(f"{_label(s)}: {', '.join(held) if held else 'none'}")
    return (
        "Rates sustained (nothing unsent, at least 98 % answered with a 200; above them the "
        "overhead and latency are those of a queue): " + "; ".join(parts) + "."
    )


def _verdicts(scenarios: list[dict]) -> list[str]:
    """The target, checked against the data: lower overhead at every rate than LiteLLM with
    as many workers, and a higher saturation throughput."""
    lines = []
    for workers in (1, 2):
        rival = next((s for s in scenarios if s["gateway"] == "litellm"
                      and s["workers"] == workers), None)  # fmt: skip
        if rival is None:
            continue
        ours = [s for s in scenarios if s["gateway"] == "polydistill" and s["workers"] == workers]
        for s in ours:
            worse = []
            for mine, theirs in zip(s["rates"], rival["rates"], strict=True):
                for q in ("p50", "p95", "p99"):
                    a, b = mine[f"overhead_{q}_ms"], theirs[f"overhead_{q}_ms"]
                    if a is None or b is None or a >= b:
                        worse.append(f"{q} at {mine['offered_per_s']}/s")
            ratio = s["saturation"]["achieved_per_s"] / max(
                rival["saturation"]["achieved_per_s"], 1e-9
            )
            p99 = [
                f"{t['overhead_p99_ms'] / m['overhead_p99_ms']:.1f}×"
                if m["overhead_p99_ms"] and t["overhead_p99_ms"] else "–"
                for m, t in zip(s["rates"], rival["rates"], strict=True)
            ]  # fmt: skip
            lowest = "lower at every rate and percentile" if not worse else (
                "not lower at " + ", ".join(worse)
            )  # fmt: skip
            alone = f"{_ms(s['serial']['overhead_p50_ms'])}/{_ms(s['serial']['overhead_p99_ms'])}"
            theirs = f"{_ms(rival['serial']['overhead_p50_ms'])}/" + _ms(
                rival["serial"]["overhead_p99_ms"]
            )
            lines.append(
                f"- {_label(s)} against {_label(rival)}: one request at a time, overhead p50/p99 "
                f"{alone} ms against {theirs} ms; at the fixed rates {lowest}; LiteLLM's p99 "
                f"overhead ÷ polydistill's at {', '.join(map(str, RATES))} req/s: "
                f"{', '.join(p99)}; saturation {s['saturation']['achieved_per_s']:.0f} against "
                f"{rival['saturation']['achieved_per_s']:.0f} req/s ({ratio:.2f}×)."
            )
    return lines


def _metering_line(scenarios: list[dict]) -> str:
    ours = [s for s in scenarios if s["gateway"] == "polydistill"]
    exact = [s for s in ours if s["ledger_rows"] == s["ok_responses"]]
    spend = [s for s in ours if s["ledger_spend_micros"] == s["key_spent_micros"]]
    held = [s for s in ours if s["key_reserved_micros"] == 0]
    total = sum(s["ok_responses"] for s in ours)
    return (
        f"Metering: in {len(exact)} of {len(ours)} polydistill scenarios the usage ledger holds "
        f"one row per 200 response ({total} responses in all); the key's spend equals the "
        f"ledger's sum in {len(spend)} of {len(ours)}, and nothing stays reserved in "
        f"{len(held)} of {len(ours)}."
    )


def _race_table(races: list[dict]) -> list[str]:
    lines = [
        f"Budget race: {RACE_REQUESTS} concurrent requests, a budget for exactly "
        f"{RACE_AFFORDABLE} (money in micro-dollars).",
        "",
        "| database | workers | accepted | refused (429) | other | budget | accepted spend "
        "| key spent | still reserved | ledger rows |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in races:
        lines.append(
            f"| {r['database']} | {r['workers']} | {r['accepted']} | {r['refused_429']} "
            f"| {r['other']} | {r['budget_micros']} | {r['accepted_spend_micros']} "
            f"| {r['key_spent_micros']} | {r['key_reserved_micros']} | {r['ledger_rows']} |"
        )
    return lines


def _setup_lines(result: dict[str, Any]) -> list[str]:
    pg = result.get("postgresql")
    pg_text = (
        f"PostgreSQL {pg['server_version']} (a throwaway cluster on loopback, fsync "
        f"{pg['fsync']}, synchronous_commit {pg['synchronous_commit']})"
        if pg else "no PostgreSQL (binaries not found)"
    )  # fmt: skip
    published = result["litellm_published"]
    litellm_text = (
        "LiteLLM features on: " + "; ".join(result["litellm_features"]) + ". Off: "
        + "; ".join(result["litellm_off"]) + "."
        if result["litellm_ran"] else "LiteLLM did not run (`make install-litellm`)."
    )  # fmt: skip
    return [
        f"Non-streamed `/v1/chat/completions`, {MAX_TOKENS} tokens from an instant mock "
        f"upstream; one request at a time for {result['seconds']:g} s, then open loop at "
        f"{', '.join(map(str, RATES))} requests/s (evenly spaced, "
        f"{result['seconds']:g} s each, at most {MAX_CONNECTIONS} connections), then a closed "
        f"loop of {SATURATION_CONNECTIONS} connections for {result['seconds']:g} s (the "
        "saturation point). Overhead: the gateway's own header, total time inside it minus "
        "the upstream call (polydistill `x-polydistill-overhead-ms`, LiteLLM "
        "`x-litellm-overhead-duration-ms`), percentiles over the 200 responses. Latency: client "
        "side, from each request's scheduled time to its last byte. polydistill: metering and "
        f"budgets on (a price, a key with a budget, one ledger row per request), {pg_text} or "
        f"SQLite (WAL). {litellm_text}",
        "",
        f"LiteLLM publishes overhead p50/p95/p99 of {published['overhead_p50_ms']}/"
        f"{published['overhead_p95_ms']}/{published['overhead_p99_ms']} ms at about "
        f"{published['requests_per_s']} requests/s ({published['setup']}); the rows below "
        "measure both on this machine, where gateways, upstream and load generator share "
        f"{result['environment']['cores_usable']} cores.",
        "",
    ]


def markdown(result: dict[str, Any]) -> str:
    scenarios = result["scenarios"]
    lines = [SECTION, "", results_md.environment_lines(result).rstrip("\n"), ""]
    lines += _setup_lines(result)
    lines += _load_table(scenarios)
    lines += ["", _sustained_line(scenarios), "", *_verdicts(scenarios)]
    if any(s["gateway"] == "polydistill" for s in scenarios):
        lines += ["", _metering_line(scenarios)]
    lines += ["", *_race_table(result["budget_race"])]
    return "\n".join(lines) + "\n"
