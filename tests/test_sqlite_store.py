"""A new SQLite tracking store: a copy of one migrated empty store, or MLflow's own migrations.

Real MLflow, real SQLite files; the template cache is redirected to
``tmp_path`` through ``XDG_CACHE_HOME``.
"""

from __future__ import annotations

import contextlib
import sqlite3

import mlflow
import pytest
from mlflow import MlflowClient

from torchrl_eaudeqn.tracking.runs import (
    _dispose_engines,
    _empty_store_template,
    _init_sqlite_store,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _dump(path):
    """Tables, columns, indexes, row counts, the Default experiment, alembic's revision.

    Columns and indexes, not the ``CREATE`` text: MLflow's own migrations
    write the CHECK constraints of one table in varying order.
    """
    with sqlite3.connect(path) as db:
        tables = sorted(
            t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        )
        schema = {
            t: (
                db.execute(f'PRAGMA table_info("{t}")').fetchall(),
                sorted(row[1:3] for row in db.execute(f'PRAGMA index_list("{t}")')),
            )
            for t in tables
        }
        version = db.execute("SELECT version_num FROM alembic_version").fetchall()
        rows = {t: db.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}
        default = db.execute(
            "SELECT name, artifact_location, lifecycle_stage FROM experiments "
            "WHERE experiment_id = 0"
        ).fetchall()
    return schema, version, rows, default


def _same_store(path, reference, cwd):
    """``path`` is the store MLflow itself makes, in working directory ``cwd``."""
    schema, version, rows, default = _dump(path)
    assert (schema, version, rows) == reference[:3]
    assert default == [("Default", str(cwd / "mlruns" / "0"), "active")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """What MLflow's own migrations make (one store for the module: ~2.5 s each)."""
    path = tmp_path_factory.mktemp("own") / "own.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    _dispose_engines()
    return _dump(path)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def cache(cache_root, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_root))
    return cache_root / "torchrl_eaudeqn"


def test_a_copied_store_is_the_store_mlflow_migrates(tmp_path, cache, reference, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the Default experiment's artifacts go under the working directory
    _init_sqlite_store(f"sqlite:///{tmp_path}/first.db")  # builds the template, then copies it
    (template,) = cache.glob("mlflow-*-empty.db")
    assert mlflow.__version__ in template.name
    assert _empty_store_template() == template  # a valid template, so first.db is a copy
    built = template.stat().st_mtime_ns
    _init_sqlite_store(f"sqlite:///{tmp_path}/second.db")
    assert template.stat().st_mtime_ns == built  # reused, not rebuilt
    _same_store(tmp_path / "first.db", reference, tmp_path)
    _same_store(tmp_path / "second.db", reference, tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path}/second.db")
    run = client.create_run(client.create_experiment("e"))
    client.log_metric(run.info.run_id, "m", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}
    assert not list(tmp_path.glob(".*init-*")) and not list(cache.glob(".*"))


def test_an_existing_store_is_left_as_it_is(tmp_path, cache):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _init_sqlite_store(uri)
    client = MlflowClient(uri)
    client.create_experiment("kept")
    _init_sqlite_store(uri)
    assert client.get_experiment_by_name("kept") is not None


def test_an_unwritable_cache_falls_back_to_mlflows_migrations(tmp_path, reference, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.chdir(tmp_path)
    assert _empty_store_template() is None
    _init_sqlite_store(f"sqlite:///{tmp_path}/mlflow.db")
    _same_store(tmp_path / "mlflow.db", reference, tmp_path)


def test_a_template_that_is_not_an_empty_store_is_not_copied(tmp_path, monkeypatch, reference):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert _empty_store_template() is not None
    (template,) = (tmp_path / "torchrl_eaudeqn").glob("mlflow-*-empty.db")
    with contextlib.closing(sqlite3.connect(template)) as db, db:  # a stray experiment
        db.execute(
            "INSERT INTO experiments (experiment_id, name, lifecycle_stage) "
            "VALUES (7, 'stray', 'active')"
        )
    assert _empty_store_template() is None
    template.write_bytes(b"not a database" * 100)
    assert _empty_store_template() is None
    _init_sqlite_store(f"sqlite:///{tmp_path}/mlflow.db")  # MLflow migrates it instead
    _same_store(tmp_path / "mlflow.db", reference, tmp_path)
