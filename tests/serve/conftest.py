"""Fixtures of the gateway's tests: the tiny chat model and databases (SQLite and
PostgreSQL: the tests that take `db_url` run on both)."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_fixtures import build_tiny_chat_model
from serve_postgres import create_database, drop_database, pg_admin_url

from polydistill.serve.core.served_model import ServedModel, load_causal_lm, load_served_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_chat_model(tmp_path_factory.mktemp("models") / "tiny-student")


@pytest.fixture(scope="session")
def served(tiny_model_dir: Path) -> ServedModel:
    return load_served_model(tiny_model_dir)


@pytest.fixture(scope="session")
def causal_lm(tiny_model_dir: Path):
    return load_causal_lm(tiny_model_dir)


@pytest.fixture(scope="session")
def pg_admin() -> str:
    url = pg_admin_url()
    if url is None:
        # Never a skip: the PostgreSQL side of the ledger is part of what the suite proves.
        pytest.fail(
            "PostgreSQL server binaries not found: `make test` installs them "
            "(scripts/install-test-services.sh; apt-get install postgresql)"
        )
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
        return
    admin = request.getfixturevalue("pg_admin")
    url = create_database(admin)
    yield url
    drop_database(admin, url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"
