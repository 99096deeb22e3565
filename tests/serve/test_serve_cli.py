"""The gateway's commands through typer's runner: keys create/list/revoke/rotate, usage
export, their errors (never with a database password), and registration on another typer
app."""

import json
import os
import socket
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from polydistill.errors import UserError
from polydistill.serve.commands import keys_app, register, serve_app
from polydistill.serve.metering import ledger
from polydistill.serve.metering.keys import SECRET_ENV
from polydistill.serve.metering.storage import open_database

runner = CliRunner()


def _ok(app: typer.Typer, *args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_key_commands_and_usage_export(tmp_path) -> None:
    db = str(tmp_path / "gateway.db")
    key = _ok(keys_app, "create", "--db", db, "--name", "acme", "--budget", "2.5", "--rpm", "60",
              "--models", "a,b", "--expires", "30d", "--max-tokens", "64").strip()  # fmt: skip
    assert key.startswith("pd_")
    [listed] = json.loads(_ok(keys_app, "list", "--db", db, "--format", "json"))
    assert listed["budget_micros"] == 2_500_000 and listed["models"] == ["a", "b"]
    assert key not in json.dumps(listed) and listed["key_prefixes"][0] == key[:16] + "…"
    table = _ok(keys_app, "list", "--db", db)
    assert "acme" in table and "2.500000" in table
    rotated = _ok(keys_app, "rotate", "--db", db, "--name", "acme", "--grace", "1h").strip()
    assert rotated.startswith("pd_") and rotated != key
    assert "revoked acme" in _ok(keys_app, "revoke", "--db", db, "--name", "acme")
    assert (
        json.loads(_ok(keys_app, "list", "--db", db, "--format", "json"))[0]["status"] == "revoked"
    )

    engine = open_database(db)
    for request_id, tokens in (("r1", 3), ("r2", 4)):
        ledger.settle(engine, request_id, 1, "acme", "m", "completions", tokens, 2, 1_234_567,
                      True, "stop", 1_700_000_000_000)  # fmt: skip
    events = [json.loads(line) for line in _ok(serve_app, "usage", "--db", db).splitlines()]
    assert [e["id"] for e in events] == ["r1", "r2"]
    assert events[0]["data"]["cost_usd"] == "1.234567" and events[0]["time"].endswith("Z")
    assert {"specversion", "id", "source", "subject", "type", "time", "data"} <= set(events[0])
    csv_lines = _ok(serve_app, "usage", "--db", db, "--format", "csv", "--key", "acme").splitlines()
    assert len(csv_lines) == 3 and csv_lines[1].split(",")[8] == "1.234567"
    assert _ok(serve_app, "usage", "--db", db, "--since", "2030-01-01") == ""


@pytest.mark.parametrize(
    ("app", "args", "message"),
    [
        (keys_app, ["create", "--db", "DB", "--name", "x", "--budget", "1.0000001"], "6 decimal"),
        (keys_app, ["create", "--db", "DB", "--name", "x", "--expires", "soon"], "duration"),
        (keys_app, ["revoke", "--db", "DB", "--name", "ghost"], "no key named"),
        (keys_app, ["rotate", "--db", "DB", "--name", "ghost"], "no key named"),
        (keys_app, ["create", "--db", "mysql://x/y", "--name", "x"], "unsupported database"),
        (serve_app, ["usage", "--db", "DB", "--format", "xml"], "csv or json"),
        (serve_app, ["serve", "DIR/missing"], "does not exist"),
    ],
)
def test_bad_input_is_a_user_error(tmp_path, app, args, message) -> None:
    args = [a.replace("DB", str(tmp_path / "g.db")).replace("DIR", str(tmp_path)) for a in args]
    result = runner.invoke(app, args)
    assert isinstance(result.exception, UserError), result.output
    assert message in str(result.exception)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once the probe is closed


def test_database_passwords_never_reach_an_error(tmp_path, tiny_model_dir) -> None:
    """A password-bearing URL that cannot be opened, and one of an unsupported kind: the
    one-line errors name the database with the password masked, through typer's runner and
    through a real `serve` process's stderr."""
    password = "pw-Secr3t-do-not-print"
    unreachable = f"postgresql://admin:{password}@127.0.0.1:{_closed_port()}/gateway"
    for url, expected in (
        (unreachable, "cannot open database postgresql+psycopg://admin:***@127.0.0.1:"),
        (f"mysql://admin:{password}@db/gateway", "unsupported database URL scheme 'mysql'"),
    ):
        result = runner.invoke(keys_app, ["create", "--db", url, "--name", "x"])
        assert isinstance(result.exception, UserError), result.output
        assert expected in str(result.exception)
        assert password not in str(result.exception) + result.output
    env = {**os.environ, SECRET_ENV: "s" * 32}
    served = subprocess.run(
        [sys.executable, "-m", "polydistill.serve", "serve", str(tiny_model_dir),
         "--db", unreachable, "--port", str(_closed_port())],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert served.returncode == 2, served.stderr
    [line] = [line for line in served.stderr.splitlines() if line.startswith("error: ")]
    assert "cannot open database postgresql+psycopg://admin:***@" in line
    assert password not in served.stdout + served.stderr


def test_register_adds_serve_usage_and_keys() -> None:
    app = typer.Typer()

    @app.command()
    def run() -> None: ...

    register(app)
    help_text = runner.invoke(app, ["--help"]).output
    assert all(name in help_text for name in ("serve", "usage", "keys", "run"))
    assert "--upstream" in runner.invoke(app, ["serve", "--help"]).output
