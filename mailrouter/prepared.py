"""prepared: the statements every message runs, compiled once and run on SQLite's own cursor.

SQLAlchemy's work around each execution (an execution context, parameters built and processed
name by name, a result object) cost the intake several times what SQLite takes to run the
statement (bench/RESULTS.md). A `Prepared` statement is compiled by SQLAlchemy once per set of
parameter names, with the bind processors and column defaults SQLAlchemy would apply, and then
goes to the driver directly: the same SQL, the same values stored. PostgreSQL keeps SQLAlchemy's
path. A driver error is translated as `db.unavailable` decides, like every other statement's.
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Connection, Delete, Insert, Select, Update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import ColumnDefault
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from mailrouter.db import unavailable
from mailrouter.errors import DatabaseUnavailable

Params = Mapping[str, Any]
Statement = Select[Any] | Insert | Update | Delete

# What a positional parameter's value comes from: the caller's parameters (by name, processed),
# a value fixed in the statement or a scalar column default (processed once, at compile time),
# or a column default to call for each row (then processed).
_GIVEN, _FIXED, _CALLED = 0, 1, 2


def _record(names: list[str]) -> Any:
    return namedtuple("Record", names, rename=True)  # the columns are known only at run time


class _Form:
    """The statement compiled for one set of parameter names."""

    __slots__ = ("columns", "record", "slots", "sql")

    def __init__(self, statement: ClauseElement, dialect: Dialect, names: tuple[str, ...]) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect, column_keys=list(names)))
        assert compiled.positional and "POSTCOMPILE" not in compiled.string, "no expanding parameters"
        self.sql = compiled.string
        defaults: dict[str, ColumnDefault] = {}
        for column, default in (
            *((column, column.default) for column in compiled.insert_prefetch),
            *((column, column.onupdate) for column in compiled.update_prefetch),
        ):
            assert isinstance(default, ColumnDefault), f"{column.key}: a default computed in Python"
            defaults[column.key] = default
        given = set(names)
        slots: list[tuple[int, Any, Callable[[Any], Any] | None]] = []
        for name in compiled.positiontup or ():
            bind = compiled.binds[name]
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            default = defaults.get(name)
            if name in given:
                slots.append((_GIVEN, name, process))
            elif default is not None and default.is_callable:
                slots.append((_CALLED, default.arg, process))
            else:
                assert default is not None or not bind.required, f"parameter {name!r} not given"
                value = default.arg if default is not None else bind.effective_value
                slots.append((_FIXED, process(value) if process else value, None))
        unused = given - set(compiled.binds)
        assert not unused, f"parameters the statement does not take: {sorted(unused)}"
        self.slots = tuple(slots)
        columns = getattr(statement, "exported_columns", None)
        self.columns = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns or ()
        )
        # Rows read by column name, as SQLAlchemy's rows are: `row.id`, `row._asdict()`.
        self.record: Any = _record(list(columns.keys()) if columns else [])

    def bind(self, params: Params) -> list[Any]:
        values = []
        for source, value, process in self.slots:
            if source == _GIVEN:
                value = params[value]
            elif source == _CALLED:
                value = value(None)
            values.append(value if process is None else process(value))
        return values

    def row(self, values: Sequence[Any]) -> Any:
        return self.record._make(
            process(value) if process is not None else value
            for process, value in zip(self.columns, values, strict=True)
        )


class Prepared:
    """A Core statement (insert, update, delete or select) for the connection of a transaction
    in hand. Parameters are passed as a dict; a statement takes the same names on every call
    from a given place, so each set of names is compiled once."""

    __slots__ = ("_forms", "statement")

    def __init__(self, statement: Statement) -> None:
        self.statement = statement
        self._forms: dict[tuple[str, ...], _Form] = {}

    def _form(self, connection: Connection, params: Params) -> _Form:
        names = tuple(params)
        form = self._forms.get(names)
        if form is None:
            form = self._forms[names] = _Form(self.statement, connection.dialect, names)
        return form

    def _run(self, connection: Connection, form: _Form, values: Any, many: bool = False) -> sqlite3.Cursor:
        assert connection.in_transaction(), "a prepared statement runs in the caller's transaction"
        driver = connection.connection.dbapi_connection
        assert driver is not None
        try:
            cursor: sqlite3.Cursor = (
                driver.executemany(form.sql, values) if many else driver.execute(form.sql, values)
            )
            return cursor
        except sqlite3.Error as exc:
            reason = unavailable(exc)
            if reason is not None:
                raise DatabaseUnavailable(reason) from exc
            raise DBAPIError.instance(
                form.sql, None, exc, sqlite3.Error, hide_parameters=True, dialect=connection.dialect
            ) from exc

    def rowcount(self, connection: Connection, params: Params) -> int:
        """Run it; how many rows it changed."""
        if connection.dialect.name != "sqlite":
            return int(connection.execute(self.statement, dict(params)).rowcount)
        form = self._form(connection, params)
        return int(self._run(connection, form, form.bind(params)).rowcount)

    def many(self, connection: Connection, rows: Sequence[Params]) -> None:
        """Run it once for each row of parameters (all with the same names)."""
        if not rows:
            return
        if connection.dialect.name != "sqlite":
            connection.execute(self.statement, [dict(row) for row in rows])
            return
        form = self._form(connection, rows[0])
        self._run(connection, form, [form.bind(row) for row in rows], many=True)

    def first(self, connection: Connection, params: Params) -> Any:
        """The first row it returns (a select, or RETURNING), or None. A row is a tuple whose
        columns are also read by name, as SQLAlchemy's are."""
        if connection.dialect.name != "sqlite":
            return connection.execute(self.statement, dict(params)).first()
        form = self._form(connection, params)
        cursor = self._run(connection, form, form.bind(params))
        values = cursor.fetchone()
        cursor.close()  # RETURNING: SQLite finishes the statement only when its rows are read
        return None if values is None else form.row(values)

    def all(self, connection: Connection, params: Params) -> list[Any]:
        """Every row it returns."""
        if connection.dialect.name != "sqlite":
            return list(connection.execute(self.statement, dict(params)).all())
        form = self._form(connection, params)
        return [form.row(values) for values in self._run(connection, form, form.bind(params)).fetchall()]

    def scalar(self, connection: Connection, params: Params) -> Any:
        """The first column of the one row it returns (an id by RETURNING, a count)."""
        row = self.first(connection, params)
        assert row is not None, "the statement returns a row"
        return row[0]
