"""The gateway's command line: `serve`, `usage` (in `serve_app`) and `keys ...` (`keys_app`).

`register(app)` adds them to the `polydistill` typer app. Until then, or standalone:
`python -m polydistill.serve serve MODEL_DIR [NAME=MODEL_DIR ...]`,
`python -m polydistill.serve keys create ...`.
Every command that touches keys or usage takes `--db` (a SQLAlchemy URL or a SQLite path).
"""

import csv
import io
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from polydistill.errors import UserError
from polydistill.serve.metering.money import Price, micros_to_usd, usd_to_micros

if TYPE_CHECKING:
    import socket

    from polydistill.serve.settings import GatewaySettings

serve_app = typer.Typer(help="Serve a model as a metered OpenAI-compatible API.")
keys_app = typer.Typer(help="Manage the gateway's API keys.", no_args_is_help=True)

DbOption = Annotated[str, typer.Option("--db", help="Database URL or SQLite file path.")]
NameOption = Annotated[str, typer.Option("--name", help="Name of the key.")]
SecretOption = Annotated[
    Path | None,
    typer.Option(
        "--secret-file",
        help="Server secret file (default: POLYDISTILL_SERVER_SECRET, else <sqlite db>.secret).",
    ),
]


def parse_models(items: list[str]) -> tuple[tuple[str | None, Path], ...]:
    """`DIR` or `NAME=DIR` per served model (an existing DIR containing `=` is a DIR)."""
    sources = []
    for item in items:
        name, sep, path = item.partition("=")
        if sep and name and not Path(item).exists():
            sources.append((name, Path(path)))
        else:
            sources.append((None, Path(item)))
    return tuple(sources)


@serve_app.command("serve")
def serve(
    models: Annotated[
        list[str],
        typer.Argument(
            help="Model directories, each DIR (served under its own id) or NAME=DIR.",
            metavar="MODEL_DIR...",
        ),
    ],
    host: Annotated[str, typer.Option(help="API address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    db: Annotated[
        str | None, typer.Option("--db", help="Database (default: <MODEL_DIR>.gateway.db).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Gateway settings (YAML).")] = None,
    admin_host: Annotated[str, typer.Option(help="Address of the /metrics port.")] = "127.0.0.1",
    admin_port: Annotated[
        int | None, typer.Option(help="Port for /metrics (default: port + 1).")
    ] = None,
    model_name: Annotated[
        str | None, typer.Option(help="Served model id (one MODEL_DIR; else NAME=DIR).")
    ] = None,
    upstream: Annotated[
        str | None, typer.Option(help="Front this vLLM-compatible server instead.")
    ] = None,
    upstream_model: Annotated[str | None, typer.Option(help="Model id upstream.")] = None,
    price_input: Annotated[
        str | None, typer.Option(help="USD per million prompt tokens (overrides --config).")
    ] = None,
    price_output: Annotated[
        str | None, typer.Option(help="USD per million completion tokens.")
    ] = None,
    secret_file: SecretOption = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1, help="Worker processes sharing the port (worker k's metrics: admin port + k)."
        ),
    ] = 1,
) -> None:
    """Serve the models on host:port side by side, metrics on the admin port. Each model's
    signed lineage is verified first: one that does not match its weights stops the gateway."""
    from polydistill.serve.settings import load_settings

    settings = load_settings(config)
    price = None
    if price_input is not None or price_output is not None:
        price = Price(
            usd_to_micros(price_input or "0", "--price-input"),
            usd_to_micros(price_output or "0", "--price-output"),
        )
    admin_port = admin_port if admin_port is not None else port + 1
    if admin_host == host and admin_port <= port < admin_port + workers:
        raise UserError("--admin-port must differ from --port (worker k uses admin port + k)")
    options = _ServeOptions(
        parse_models(models), settings, db, model_name, upstream, upstream_model, secret_file,
        price,
        host, port, admin_host, admin_port,
    )  # fmt: skip
    if workers == 1:
        options.run()
        return
    raise typer.Exit(options.run_workers(workers))


@dataclass(frozen=True)
class _ServeOptions:
    """What `serve` builds a gateway from, in one process or in each worker."""

    models: tuple[tuple[str | None, Path], ...]
    settings: "GatewaySettings"
    db: str | None
    model_name: str | None
    upstream: str | None
    upstream_model: str | None
    secret_file: Path | None
    price: Price | None
    host: str
    port: int
    admin_host: str
    admin_port: int

    def _gateway(self):  # -> Gateway, imported lazily to keep --help fast
        from polydistill.serve.assemble import open_gateway

        return open_gateway(
            self.models, self.settings, self.db, self.model_name, self.upstream,
            self.upstream_model, self.secret_file, self.price,
        )  # fmt: skip

    def run(self) -> None:
        from polydistill.serve.app import create_app
        from polydistill.serve.core.metrics import admin_app
        from polydistill.serve.server import run_servers

        gateway = self._gateway()
        typer.echo(
            f"serving {', '.join(gateway.models)} on http://{self.host}:{self.port}/v1 "
            f"(metrics on http://{self.admin_host}:{self.admin_port}/metrics)"
        )
        admin = admin_app(gateway.metrics, lambda: gateway.ready)
        api = create_app(gateway)
        run_servers(api, admin, self.host, self.port, self.admin_host, self.admin_port)

    def worker(self, index: int, listener: "socket.socket") -> None:
        """Worker `index` of several: its own gateway on the shared socket."""
        from polydistill.serve.app import create_app
        from polydistill.serve.core.metrics import admin_app
        from polydistill.serve.server import run_loop, serve_both

        gateway = self._gateway()
        admin = admin_app(gateway.metrics, lambda: gateway.ready)
        admin_port = self.admin_port + index
        serving = serve_both(
            create_app(gateway), admin, self.host, self.port, self.admin_host, admin_port,
            sockets=[listener],
        )  # fmt: skip
        run_loop(serving)

    def run_workers(self, workers: int) -> int:
        from polydistill.serve.assemble import default_database, model_sources, verified_models
        from polydistill.serve.metering.keys import load_server_secret
        from polydistill.serve.metering.storage import database_url, open_database
        from polydistill.serve.server import run_workers

        # Once, before the workers race to do it: the lineages (a model that fails stops the
        # gateway with one line here, not N workers), the tables and the default secret file.
        sources = model_sources(self.models, self.model_name)
        verified_models(sources)
        url = database_url(self.db) if self.db else default_database(sources[0][1])
        load_server_secret(url, self.secret_file)
        open_database(url).dispose()
        last = self.admin_port + workers - 1
        typer.echo(
            f"serving {', '.join(str(path) for _, path in sources)} on "
            f"http://{self.host}:{self.port}/v1 with {workers} "
            f"workers (metrics on http://{self.admin_host}:{self.admin_port}..{last}/metrics)"
        )
        return run_workers(self.worker, self.host, self.port, workers)


def _open(db: str):  # -> sqlalchemy.Engine, imported lazily to keep --help fast
    from polydistill.serve.metering.storage import open_database

    return open_database(db)


def _secret(db: str, secret_file: Path | None) -> bytes:
    from polydistill.serve.metering.keys import load_server_secret
    from polydistill.serve.metering.storage import database_url

    return load_server_secret(database_url(db), secret_file)


@keys_app.command("create")
def keys_create(
    db: DbOption,
    name: NameOption,
    budget: Annotated[str | None, typer.Option(help="Budget in USD (default: none).")] = None,
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per window.")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, help="Tokens per window.")] = None,
    models: Annotated[
        list[str] | None, typer.Option("--models", help="Allowed model ids (repeatable).")
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="Expiry: ISO date/time or a duration like 30d.")
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Cap on max_tokens.")] = None,
    max_n: Annotated[int | None, typer.Option(min=1, help="Cap on n.")] = None,
    max_logprobs: Annotated[
        int | None, typer.Option(min=0, max=20, help="Cap on logprobs/top_logprobs.")
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy", help="Lineage policy (YAML): the key may use only models that pass it."
        ),
    ] = None,
    secret_file: SecretOption = None,
) -> None:
    """Create a key and print it once (only its HMAC is stored)."""
    from polydistill.lineage.rules import load_policy
    from polydistill.serve.metering.accounts import create_key
    from polydistill.serve.metering.timeutil import now_ms, parse_time_ms

    rules = load_policy(policy) if policy is not None else None  # checked before anything
    now = now_ms()
    allowed = [m for item in models or [] for m in item.split(",") if m] or None
    key = create_key(
        _open(db),
        _secret(db, secret_file),
        name,
        now,
        budget_micros=usd_to_micros(budget, "--budget") if budget is not None else None,
        rpm=rpm,
        tpm=tpm,
        models=allowed,
        expires_ms=parse_time_ms(expires, now, future=True) if expires else None,
        max_tokens=max_tokens,
        max_n=max_n,
        max_logprobs=max_logprobs,
        policy=rules,
    )
    typer.echo(key)


@keys_app.command("list")
def keys_list(
    db: DbOption,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """List keys with their status, spend and limits (never the keys themselves)."""
    from polydistill.serve.metering.accounts import list_keys
    from polydistill.serve.metering.timeutil import now_ms

    summaries = list_keys(_open(db), now_ms())
    if output == "json":
        typer.echo(json.dumps([asdict(s) for s in summaries], indent=2))
        return
    if output != "table":
        raise UserError(f"--format must be table or json, not {output!r}")
    typer.echo(
        f"{'name':20} {'status':8} {'spent USD':>12} {'budget USD':>12} {'rpm':>6} {'tpm':>8}  keys"
    )
    for s in summaries:
        budget = micros_to_usd(s.budget_micros) if s.budget_micros is not None else "-"
        typer.echo(
            f"{s.name:20} {s.status:8} {micros_to_usd(s.spent_micros):>12} {budget:>12} "
            f"{s.rpm or '-':>6} {s.tpm or '-':>8}  {' '.join(s.key_prefixes)}"
        )


@keys_app.command("revoke")
def keys_revoke(db: DbOption, name: NameOption) -> None:
    """Revoke every credential of a key at once."""
    from polydistill.serve.metering.accounts import revoke_key
    from polydistill.serve.metering.timeutil import now_ms

    revoke_key(_open(db), name, now_ms())
    typer.echo(f"revoked {name}")


@keys_app.command("rotate")
def keys_rotate(
    db: DbOption,
    name: NameOption,
    grace: Annotated[str, typer.Option(help="How long the old key stays valid.")] = "24h",
    secret_file: SecretOption = None,
) -> None:
    """Print a new key for NAME; the old one keeps working for the grace period."""
    from polydistill.serve.metering.accounts import rotate_key
    from polydistill.serve.metering.timeutil import duration_seconds, now_ms

    key = rotate_key(_open(db), _secret(db, secret_file), name, duration_seconds(grace), now_ms())
    typer.echo(key)


@serve_app.command("usage")
def usage(
    db: DbOption,
    key: Annotated[str | None, typer.Option("--key", help="Only this key (by name).")] = None,
    since: Annotated[
        str | None, typer.Option(help="From this ISO date/time, or a duration back like 7d.")
    ] = None,
    output: Annotated[str, typer.Option("--format", help="csv or json.")] = "json",
) -> None:
    """Export the usage ledger (JSON lines of CloudEvents, or CSV)."""
    from polydistill.serve.metering.ledger import usage_rows
    from polydistill.serve.metering.timeutil import now_ms, parse_time_ms
    from polydistill.serve.metering.usage_export import usage_csv_rows, usage_event

    if output not in ("csv", "json"):
        raise UserError(f"--format must be csv or json, not {output!r}")
    since_ms = parse_time_ms(since, now_ms(), future=False) if since else None
    rows = usage_rows(_open(db), key, since_ms)
    if output == "json":
        for row in rows:
            typer.echo(json.dumps(usage_event(row), separators=(",", ":")))
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for line in usage_csv_rows(rows):
        writer.writerow(line)
    sys.stdout.write(buffer.getvalue())


def register(app: typer.Typer) -> None:
    """Add `serve`, `usage` and `keys` to the `polydistill` app."""
    app.registered_commands.extend(serve_app.registered_commands)
    app.add_typer(keys_app, name="keys")
