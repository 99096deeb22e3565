"""Per-key lineage policies in the ledger and at the gateway, without a server: a key's policy
round-trips through both ledgers (SQLite and PostgreSQL), a ledger made before the policy and
notices columns existed is migrated on open, the policy is checked against a served model's
signed teacher facts, and a usage row carries the notices of the model that answered it."""

import asyncio
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from serve_harness import SERVER_SECRET, client_for, make_gateway
from typer.testing import CliRunner

from polydistill.errors import UserError
from polydistill.lineage.licences import GEMMA_NOTICE
from polydistill.lineage.rules import Policy, Rules
from polydistill.serve.assemble import model_sources, verified_models
from polydistill.serve.commands import keys_app, parse_models, serve_app
from polydistill.serve.core.access import policy_refusal
from polydistill.serve.core.served_lineage import ServedLineage, licence_notices
from polydistill.serve.engines.fixed import FixedEngine
from polydistill.serve.metering import ledger
from polydistill.serve.metering.accounts import authenticate, create_key, list_keys
from polydistill.serve.metering.storage import metadata, open_database, raw_write_transaction
from polydistill.serve.metering.usage_export import usage_csv_rows, usage_event

NOW = 1_700_000_000_000
GOV = Policy(name="gov", deny=Rules(origin=["cn"]))


def _teacher(name: str, family: str, publisher: str, origin: str, licence: dict) -> dict:
    return {"name": name, "family": family, "publisher": publisher, "origin": origin,
            "licence": licence}  # fmt: skip


APACHE = {"id": "apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0",
          "commercial": True, "commercial_limit": None, "notice": None, "naming": None,
          "use_restrictions": None, "obligations": []}  # fmt: skip
GEMMA = {"id": "gemma", "url": "https://ai.google.dev/gemma/terms", "commercial": True,
         "commercial_limit": None, "notice": GEMMA_NOTICE, "naming": None,
         "use_restrictions": "https://ai.google.dev/gemma/prohibited_use_policy",
         "obligations": ["notice", "use_restrictions"]}  # fmt: skip
QWEN = _teacher("qwen", "qwen", "Alibaba Cloud", "CN", APACHE)
GEMMA_TEACHER = _teacher("gemma", "gemma", "Google LLC", "US", GEMMA)


def _lineage(*teachers: dict) -> ServedLineage:
    summary = {"teachers": [t["name"] for t in teachers]}
    return ServedLineage(summary, list(teachers), licence_notices(list(teachers)), "NOTICE")


def test_a_keys_policy_round_trips_through_the_ledger(db_url: str) -> None:
    db = open_database(db_url)
    key = create_key(db, SERVER_SECRET, "gov", NOW, policy=GOV)
    plain = create_key(db, SERVER_SECRET, "open", NOW)
    record = authenticate(db, SERVER_SECRET, key, NOW)
    assert record is not None and record.policy == GOV
    assert authenticate(db, SERVER_SECRET, plain, NOW).policy is None
    listed = {s.name: s.policy for s in list_keys(db, NOW)}
    assert listed == {"gov": f"gov sha256:{GOV.digest}", "open": None}
    with db.connect() as conn:
        digest = conn.execute(sa.text("SELECT policy_digest FROM api_keys WHERE name = 'gov'"))
        assert digest.scalar_one() == GOV.digest


def test_a_ledger_from_before_policies_and_notices_is_migrated_on_open(db_url: str) -> None:
    old = open_database(db_url)  # the tables as an earlier version made them: columns dropped
    dropped = (("api_keys", "policy"), ("api_keys", "policy_digest"), ("usage_ledger", "notices"))
    with old.begin() as conn:
        for table, column in dropped:
            conn.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    assert "notices" not in {c["name"] for c in sa.inspect(old).get_columns("usage_ledger")}
    old.dispose()
    db = open_database(db_url)
    inspector = sa.inspect(db)
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        assert present == {c.name for c in table.columns}, table.name
    key = create_key(db, SERVER_SECRET, "gov", NOW, policy=GOV)
    assert authenticate(db, SERVER_SECRET, key, NOW).policy == GOV
    open_database(db_url).dispose()  # opening a migrated ledger again changes nothing


def test_a_policy_refuses_a_model_naming_the_teacher_and_the_rule() -> None:
    refusal = policy_refusal("student", _lineage(GEMMA_TEACHER, QWEN), GOV)
    assert refusal == (
        "policy 'gov' refuses the model 'student': its teacher 'qwen' breaks the rule "
        "deny.origin lists CN (origin of the teacher)"
    )
    assert policy_refusal("student-no-qwen", _lineage(GEMMA_TEACHER), GOV) is None
    no_facts = policy_refusal("old", ServedLineage({"teachers": ["qwen"]}), GOV)
    assert no_facts is not None and "no signed lineage" in no_facts
    assert "no signed lineage" in policy_refusal("bare", None, GOV)
    obligations = Policy(name="quiet", obligations=["naming"])
    rule = policy_refusal("student-no-qwen", _lineage(GEMMA_TEACHER), obligations)
    assert rule is not None and "gemma asks notice, use_restrictions, not accepted" in rule


def test_a_usage_row_records_the_notices_of_the_model_that_answered(db_url: str) -> None:
    lineage = _lineage(GEMMA_TEACHER, QWEN)
    assert lineage.notice_ids == ("gemma",)  # Apache-2.0 asks nothing of a distilled model
    (notice,) = lineage.notices
    assert (notice["teacher"], notice["notice"]) == ("gemma", GEMMA_NOTICE)
    db = open_database(db_url)
    create_key(db, SERVER_SECRET, "gov", NOW)
    for request_id, notices in (("with", ",".join(lineage.notice_ids)), ("without", None)):
        ledger.reserve(db, 1, request_id, 10, 10, NOW, 60, "me")
        usage = ledger.Usage(request_id, 1, "gov", "student", "/v1/completions", 3, 2, 5,
                             False, "stop", NOW, notices)  # fmt: skip
        with raw_write_transaction(db) as run:
            assert ledger.settle_in(run, usage)
    rows = {row["request_id"]: row for row in ledger.usage_rows(db)}
    assert usage_event(rows["with"])["data"]["notices"] == ["gemma"]
    assert usage_event(rows["without"])["data"]["notices"] == []
    header, *lines = usage_csv_rows([rows["with"], rows["without"]])
    assert [line[header.index("notices")] for line in lines] == ["gemma", ""]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "a=MODEL", "a=MODEL"], "two models are served as 'a'"),
        (["serve", "MODEL", "b=MODEL", "--model-name", "x"], "--model-name names one model"),
        (["serve", "a=MODEL", "--model-name", "x"], "--model-name names one model"),
        (["serve", "a=MODEL", "b=MODEL", "--upstream", "http://127.0.0.1:9"], "fronts one model"),
    ],
)
def test_several_models_are_refused_where_they_cannot_be_told_apart(
    tiny_model_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    args = [a.replace("MODEL", str(tiny_model_dir)) for a in args]
    result = CliRunner().invoke(serve_app, [*args, "--db", str(tmp_path / "g.db")])
    assert isinstance(result.exception, UserError), result.output
    assert message in str(result.exception)
    assert not (tmp_path / "g.db").exists()  # refused before the database was opened


def test_a_missing_policy_file_is_refused_at_keys_create(tmp_path: Path) -> None:
    db = str(tmp_path / "g.db")
    result = CliRunner().invoke(
        keys_app, ["create", "--db", db, "--name", "gov", "--policy", str(tmp_path / "no.yaml")]
    )
    assert isinstance(result.exception, UserError) and "not found" in str(result.exception)


def test_v1_models_lists_what_the_keys_list_and_policy_allow(served, sqlite_url) -> None:
    gateway = make_gateway(served, FixedEngine(), sqlite_url)
    keys = {
        "open": create_key(gateway.db, SERVER_SECRET, "open", NOW),
        "listed": create_key(gateway.db, SERVER_SECRET, "listed", NOW, models=[served.model_id]),
        "elsewhere": create_key(gateway.db, SERVER_SECRET, "elsewhere", NOW, models=["other"]),
        "gov": create_key(gateway.db, SERVER_SECRET, "gov", NOW, policy=GOV),
    }

    async def calls() -> tuple[dict[str, list[str]], httpx.Response]:
        async with client_for(gateway) as client:
            listed = {}
            for name, key in keys.items():
                bearer = {"Authorization": f"Bearer {key}"}
                response = await client.get("/v1/models", headers=bearer)
                listed[name] = [card["id"] for card in response.json()["data"]]
            gov = {"Authorization": f"Bearer {keys['gov']}"}
            return listed, await client.get(f"/v1/models/{served.model_id}", headers=gov)

    listed, refused = asyncio.run(calls())
    # the harness's model has no signed lineage: a key with a policy cannot check it
    assert listed == {"open": [served.model_id], "listed": [served.model_id], "elsewhere": [],
                      "gov": []}  # fmt: skip
    assert refused.status_code == 403 and "no signed lineage" in refused.json()["error"]["message"]


def test_models_are_named_by_their_directory_name_or_model_name(tiny_model_dir: Path) -> None:
    one = parse_models([str(tiny_model_dir)])
    assert one == ((None, tiny_model_dir),)
    assert model_sources(one, "x") == [("x", tiny_model_dir)]
    assert model_sources(tiny_model_dir, None) == [(None, tiny_model_dir)]
    two = parse_models([f"a={tiny_model_dir}", str(tiny_model_dir)])
    ids = [served.model_id for served, _, _ in verified_models(model_sources(two, None))]
    assert ids == ["a", tiny_model_dir.name]
