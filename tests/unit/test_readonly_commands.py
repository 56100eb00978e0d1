"""Commands that read never create, migrate or write the database, and say what to run instead."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from mailrouter.cli import main
from mailrouter.db import alembic_config, make_engine
from tests.postgres import temporary_database

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
READERS = [["cases"], ["show", "IT-1001"], ["screened"], ["quarantine", "list"]]


def _with_url(config_file: Path, url: str) -> Path:
    text_ = config_file.read_text()
    start = text_.index('database_url = "') + len('database_url = "')
    end = text_.index('"', start)
    config_file.write_text(text_[:start] + url + text_[end:])
    return config_file


def _database(config_file: Path) -> Path:
    return config_file.parent / "db.sqlite"


def _at_revision(path: Path, revision: str) -> None:
    engine = make_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        command.upgrade(alembic_config(connection), revision)
        connection.commit()
    engine.dispose()


def _fingerprint(path: Path) -> tuple[str, set[str], str | None]:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    return digest, tables, version


def _run(capsys, config_file: Path, *args: str) -> tuple[int, str]:
    code = main(["--config", str(config_file), *args])
    _, err = capsys.readouterr()
    return code, err


@pytest.mark.parametrize("args", READERS, ids=lambda a: " ".join(a))
def test_a_reading_command_does_not_create_a_missing_database(config_file, capsys, args):
    code, err = _run(capsys, config_file, *args)
    assert code == 1
    assert err.strip() == f"error: no database at {_database(config_file)}: `mailrouter migrate` creates it"
    assert not _database(config_file).exists()


@pytest.mark.parametrize("args", READERS, ids=lambda a: " ".join(a))
def test_a_reading_command_leaves_an_older_schema_alone_and_says_to_migrate(config_file, capsys, args):
    _at_revision(_database(config_file), "0003")
    before = _fingerprint(_database(config_file))
    code, err = _run(capsys, config_file, *args)
    assert code == 1
    assert err.strip() == f"error: the database is at schema 0003 (head {HEAD}); run `mailrouter migrate`"
    assert _fingerprint(_database(config_file)) == before


@pytest.mark.parametrize("args", [*READERS, ["quarantine", "retry", "--all"]], ids=lambda a: " ".join(a))
def test_a_command_refuses_a_newer_schema_naming_both_versions(config_file, capsys, args):
    path = _database(config_file)
    _at_revision(path, "head")
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    before = _fingerprint(path)
    code, err = _run(capsys, config_file, *args)
    assert code == 1
    assert err.strip() == (
        f"error: the database is at schema 0099, newer than this mailrouter (head {HEAD}): upgrade mailrouter"
    )
    assert _fingerprint(path) == before


def test_quarantine_retry_does_not_migrate_an_older_schema(config_file, capsys):
    _at_revision(_database(config_file), "0003")
    code, err = _run(capsys, config_file, "quarantine", "retry", "--all")
    assert code == 1 and "run `mailrouter migrate`" in err
    assert _fingerprint(_database(config_file))[2] == "0003"


def test_reading_a_current_database_writes_nothing(config_file, capsys):
    path = _database(config_file)
    _at_revision(path, "head")  # no case counters yet: the daemon's start would add them
    before = _fingerprint(path)
    for args in READERS[:1] + READERS[2:]:
        assert main(["--config", str(config_file), *args]) == 0
    assert _fingerprint(path) == before
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0


def test_migrate_upgrades_an_older_schema(config_file, capsys):
    _at_revision(_database(config_file), "0003")
    assert main(["--config", str(config_file), "migrate"]) == 0
    assert _fingerprint(_database(config_file))[2] == HEAD


def test_a_reading_command_on_empty_postgresql_creates_no_table(config_file, capsys):
    with temporary_database() as url:
        code, err = _run(capsys, _with_url(config_file, url), "cases")
        engine = create_engine(url)
        with engine.connect() as connection:
            tables = inspect(connection).get_table_names()
        engine.dispose()
    assert code == 1
    assert err.strip() == "error: the database has no mailrouter schema; run `mailrouter migrate`"
    assert tables == []


def test_an_unreachable_database_is_one_line_without_a_traceback(config_file, capsys):
    _with_url(config_file, "postgresql+psycopg://postgres@127.0.0.1:1/nothing")
    code, err = _run(capsys, config_file, "cases")
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "127.0.0.1" in err and "refused" in err.lower()


def test_a_missing_config_file_is_one_line(tmp_path, capsys):
    code = main(["--config", str(tmp_path / "nowhere.toml"), "cases"])
    err = capsys.readouterr().err
    assert code == 1
    assert err == f"error: {tmp_path / 'nowhere.toml'}: cannot read: No such file or directory\n"


def test_a_missing_message_file_is_one_line(config_file, tmp_path, capsys):
    code = main(["--config", str(config_file), "rules", "explain", str(tmp_path / "gone.eml")])
    err = capsys.readouterr().err
    assert code == 1
    assert err == f"error: {tmp_path / 'gone.eml'}: No such file or directory\n"
