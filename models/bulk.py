"""Multi-row statements whose SQL text does not grow with the batch, on PostgreSQL.

A multi-row ``INSERT ... VALUES (...), (...)`` or an ``IN (...)`` list has one placeholder per
value, so every batch size is new SQL: psycopg parses a query of more than 50 parameters again
at every execution (its cache stops there) and the server plans it again. Measured on the
worker, the parse of the new cycles' INSERT alone cost more CPU than the rest of applying their
events. On PostgreSQL the rows go as one array per column (``unnest``) and the list as one
array (``= ANY``): a few parameters whatever the batch, the same SQL every time, prepared once
per connection. Other databases (SQLite, in tests and small set-ups) keep the portable forms.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    Enum,
    String,
    Table,
    any_,
    bindparam,
    func,
    insert,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import QueryableAttribute, Session
from sqlalchemy.sql.elements import BindParameter


def on_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def insert_rows(session: Session, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (dicts of one shape) in one statement."""
    if not rows:
        return
    if not on_postgresql(session):
        session.execute(insert(table), list(rows))
        return
    names = _names(table, rows[0])
    _execute(session, _unnest_insert_sql(table, names, ()), _arrays(table, names, rows))


def insert_rows_returning(
    session: Session,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    returning: str,
    key: tuple[str, ...],
) -> list[Any]:
    """Insert ``rows`` (dicts of one shape) and give the ``returning`` column of each, in the
    rows' order. ``key`` names columns that tell the new rows apart (a unique constraint):
    PostgreSQL promises no order for RETURNING, so its rows are matched by it."""
    if not rows:
        return []
    if not on_postgresql(session):
        statement = insert(table).returning(table.c[returning], sort_by_parameter_order=True)
        return list(session.scalars(statement, list(rows)).all())
    names = _names(table, rows[0])
    sql = _unnest_insert_sql(table, names, (returning, *key))
    returned: dict[tuple[Any, ...], Any] = {
        tuple(found[1:]): found[0] for found in _execute(session, sql, _arrays(table, names, rows))
    }
    return [returned[tuple(row[name] for name in key)] for row in rows]


def update_rows(
    session: Session, table: Table, rows: Sequence[Mapping[str, Any]], *, key: str
) -> None:
    """Set each row's columns (dicts of one shape) where ``key`` has the row's value, in one
    statement on PostgreSQL (``UPDATE ... FROM unnest(...)``), as executemany elsewhere."""
    if not rows:
        return
    names = _names(table, rows[0])
    if not on_postgresql(session):
        statement = (
            table.update()
            .where(table.c[key] == bindparam("key_", type_=table.c[key].type))
            .values(
                {
                    name: bindparam(f"v_{name}", type_=table.c[name].type)
                    for name in names
                    if name != key
                }
            )
        )
        session.execute(
            statement,
            [
                {"key_": row[key], **{f"v_{name}": row[name] for name in names if name != key}}
                for row in rows
            ],
        )
        return
    _execute(session, _unnest_update_sql(table, names, key), _arrays(table, names, rows))


def _execute(session: Session, sql: str, arrays: dict[str, list[Any]]) -> CursorResult[Any]:
    # Straight to psycopg: its placeholders can ask for the binary format (``%b``), in which
    # an array of strings needs no escaping. In text format psycopg escapes every quote of
    # every value one regex callback at a time, and JSON is mostly quotes.
    return session.connection().exec_driver_sql(sql, arrays)


def _names(table: Table, row: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(table.c[name].key for name in row)  # KeyError for a column not in the table


def _arrays(
    table: Table, names: tuple[str, ...], rows: Sequence[Mapping[str, Any]]
) -> dict[str, list[Any]]:
    return {
        f"p{i}": _array(table.c[name], [row[name] for row in rows]) for i, name in enumerate(names)
    }


Column_ = ColumnElement[Any] | QueryableAttribute[Any]
S = TypeVar("S")


def built_once(build: Callable[[bool], S]) -> Callable[[Session], S]:
    """A statement built once per kind of database (``build(on_postgresql)``), not per call.

    Building a statement is Python work repeated for nothing when only its values change: the
    clauses coerced one by one, then a cache key computed from all of them to find the
    compiled form (a statement object keeps its key); built once, no batch pays for that
    again. The values go as parameters named in the statement
    (:func:`param_one_of`, :func:`param_keys_one_of`).
    """
    built: dict[bool, S] = {}

    def statement(session: Session) -> S:
        postgres = on_postgresql(session)
        found = built.get(postgres)
        if found is None:
            found = built[postgres] = build(postgres)
        return found

    return statement


def param_one_of(column: Column_, name: str, postgres: bool) -> ColumnElement[bool]:
    """``column IN :name`` for a statement built once: the list as one array on PostgreSQL
    (the same SQL whatever its length, as :func:`is_one_of`), an expanding list elsewhere."""
    if postgres:
        element = column.expression if isinstance(column, QueryableAttribute) else column
        return column == any_(bindparam(name, type_=postgresql.ARRAY(element.type)))
    return column.in_(bindparam(name, expanding=True))


def param_keys_one_of(columns: Sequence[Column_], name: str, postgres: bool) -> ColumnElement[bool]:
    """``(a, b) IN :name`` for a statement built once: one array per column on PostgreSQL,
    zipped back together by ``unnest``, the expanding list of tuples elsewhere. Its value comes
    from :func:`keys_param`."""
    if not postgres:
        return tuple_(*columns).in_(bindparam(name, expanding=True))
    arrays = []
    for i, column in enumerate(columns):
        element = column.expression if isinstance(column, QueryableAttribute) else column
        arrays.append(func.unnest(bindparam(f"{name}_{i}", type_=postgresql.ARRAY(element.type))))
    return tuple_(*columns).in_(select(*arrays))


def keys_param(
    name: str, keys: Sequence[tuple[Any, ...]], width: int, postgres: bool
) -> dict[str, Any]:
    """The parameters of :func:`param_keys_one_of` for ``keys`` (tuples of ``width``)."""
    if not postgres:
        return {name: list(keys)}
    return {f"{name}_{i}": [key[i] for key in keys] for i in range(width)}


def is_one_of(column: Column_, values: Sequence[Any], session: Session) -> ColumnElement[bool]:
    """``column IN values``: one array parameter on PostgreSQL, the expanding list elsewhere."""
    if on_postgresql(session):
        return column == any_(_array_param(column, list(values)))
    return column.in_(values)


def _array_param(column: Column_, values: list[Any]) -> BindParameter[Any]:
    element = column.expression if isinstance(column, QueryableAttribute) else column
    return bindparam(None, values, type_=postgresql.ARRAY(element.type))


_PG = postgresql.dialect()  # type: ignore[no-untyped-call]


def _quoted(name: str) -> str:
    # A column named like a reserved word ("order", "user") must be quoted to be spliced in.
    return str(_PG.identifier_preparer.quote(name))


def _array_params(table: Table, names: tuple[str, ...]) -> str:
    """The placeholders of ``_arrays``'s parameters, each cast to its column's array type."""
    return ", ".join(_array_placeholder(table, names, i) for i in range(len(names)))


def _array_placeholder(table: Table, names: tuple[str, ...], index: int) -> str:
    return f"CAST(%(p{index})b AS {_array_type(table.c[names[index]])})"


def _as_stored(table: Table, name: str, value_sql: str) -> str:
    # JSON travels as text (psycopg would need a wrapper object per value) and is cast back.
    return f"CAST({value_sql} AS JSON)" if isinstance(table.c[name].type, JSON) else value_sql


@functools.cache
def _unnest_insert_sql(table: Table, names: tuple[str, ...], returning: tuple[str, ...]) -> str:
    arrays = _array_params(table, names)
    picked = ", ".join(_as_stored(table, name, _quoted(name)) for name in names)
    columns = ", ".join(_quoted(name) for name in names)
    returned = ", ".join(_quoted(name) for name in returning)
    # Every name here is a column of ``table`` (rows are checked against it), quoted; values
    # only ever travel as parameters.
    return (
        f"INSERT INTO {_quoted(table.name)} ({columns}) SELECT {picked}"  # noqa: S608
        f" FROM unnest({arrays}) AS given({columns})"
        + (f" RETURNING {returned}" if returning else "")
    )


@functools.cache
def _unnest_update_sql(table: Table, names: tuple[str, ...], key: str) -> str:
    arrays = _array_params(table, names)
    target = _quoted(table.name)
    assigned = ", ".join(
        f"{_quoted(name)} = {_as_stored(table, name, f'given.{_quoted(name)}')}"
        for name in names
        if name != key
    )
    # As in _unnest_insert_sql, only the table's own names are spliced in, quoted. The
    # ``= ANY`` repeats the join's condition for the planner: without it, planning for the
    # batch's real size chose to scan the whole table and hash-join it, a cost that grows with
    # the table, where the primary key finds the batch's rows directly.
    keyed = names.index(key)  # ValueError for a key not among the names
    return (
        f"UPDATE {target} SET {assigned} FROM unnest({arrays})"  # noqa: S608
        f" AS given({', '.join(_quoted(name) for name in names)})"
        f" WHERE {target}.{_quoted(key)} = given.{_quoted(key)}"
        f" AND {target}.{_quoted(key)} = ANY({_array_placeholder(table, names, keyed)})"
    )


def _array_type(column: Column[Any]) -> str:
    # Strings as unbounded TEXT: an explicit CAST to VARCHAR(n) would cut a value that is too
    # long without a word, where storing it in the column (an assignment) refuses it, as a
    # plain INSERT does.
    if isinstance(column.type, JSON | String):
        return "TEXT[]"
    return f"{column.type.compile(dialect=_PG)}[]"


def _array(column: Column[Any], values: list[Any]) -> list[Any]:
    if isinstance(column.type, JSON):
        return [None if value is None else json.dumps(value) for value in values]
    if isinstance(column.type, Enum):
        return [value.value if isinstance(value, enum.Enum) else value for value in values]
    return values
