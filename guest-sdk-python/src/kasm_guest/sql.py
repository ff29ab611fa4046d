"""The handler's SQL database: the ``sql`` capability.

An SQLite file by default, PostgreSQL when the operator's grant says so; the handler's code
is the same. Parameters are positional (``$1``, ``$2``, ...) and always bound, never spliced
into the statement. What one call does is kept only if the handler returns without raising
(the host runs it under a savepoint of the batch's transaction), so a handler that fails half
way leaves nothing behind.

An event can still run twice (a crash between the commit and the ledger), so make writes
idempotent by event id::

    from kasm_guest import sql

    sql.execute(
        "INSERT INTO seen (event_id, at) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING",
        [event.id, event.timestamp_ms or 0],
    )
    (count,) = sql.query("SELECT count(*) FROM seen").rows[0]

Values cross as ``None`` (NULL), ``int`` (INTEGER, 64-bit; ``bool`` as 0/1), ``float``
(REAL), ``str`` (TEXT) and ``bytes`` (BLOB), both ways.

Errors: a database that is unreachable or busy is :class:`~kasm_guest.Retryable`; a
statement the database refuses (syntax, constraint, type) is :class:`~kasm_guest.Fatal`,
because it would be refused again.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence, Union

from . import _bindings
from .errors import Fatal, HandlerError, Retryable

__all__ = ["Value", "Rows", "execute", "query"]

#: What a parameter or a column value is on the Python side.
Value = Union[None, int, float, str, bytes]

_sql = _bindings.interface("sql")
_err = _bindings.result_error()

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


class Rows:
    """The result of a query: column names and one tuple of values per row."""

    __slots__ = ("columns", "rows")

    def __init__(self, columns: list[str], rows: list[tuple[Value, ...]]) -> None:
        #: Column names, in select order.
        self.columns = columns
        #: One tuple per row, one value per column.
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[tuple[Value, ...]]:
        return iter(self.rows)

    def dicts(self) -> list[dict[str, Value]]:
        """The rows as dicts keyed by column name."""
        return [dict(zip(self.columns, row)) for row in self.rows]

    def scalar(self) -> Optional[Value]:
        """The first column of the first row; ``None`` if there is no row."""
        return self.rows[0][0] if self.rows and self.rows[0] else None

    def __repr__(self) -> str:
        return f"Rows(columns={self.columns!r}, rows=<{len(self.rows)}>)"


def execute(statement: str, params: Sequence[Value] = ()) -> int:
    """Run a statement (insert, update, delete, DDL). Returns the number of rows changed."""
    if _sql is None:
        raise _bindings.missing("sql")
    lowered = _lower_all(statement, params)
    try:
        return _sql.execute(statement, lowered)
    except _err as error:
        raise _failed(statement, error.value) from None


def query(statement: str, params: Sequence[Value] = ()) -> Rows:
    """Run a query and return its rows (a result over the host's row limit is an error)."""
    if _sql is None:
        raise _bindings.missing("sql")
    lowered = _lower_all(statement, params)
    try:
        raw = _sql.query(statement, lowered)
    except _err as error:
        raise _failed(statement, error.value) from None
    return Rows(list(raw.columns), [tuple(_lift(v) for v in row) for row in raw.rows])


def _lower_all(statement: str, params: Sequence[Value]) -> list[Any]:
    if isinstance(params, (str, bytes)):
        raise TypeError("params must be a sequence of values, not a single str or bytes")
    return [_lower(statement, i, value) for i, value in enumerate(params, start=1)]


def _lower(statement: str, index: int, value: Value) -> Any:
    assert _sql is not None
    if value is None:
        return _sql.Value_Null()
    if isinstance(value, bool):
        return _sql.Value_Integer(int(value))
    if isinstance(value, int):
        if not _I64_MIN <= value <= _I64_MAX:
            raise Fatal(f"sql `{_short(statement)}`: parameter ${index} {value} is outside 64 bits")
        return _sql.Value_Integer(value)
    if isinstance(value, float):
        return _sql.Value_Real(value)
    if isinstance(value, str):
        return _sql.Value_Text(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _sql.Value_Blob(bytes(value))
    raise TypeError(
        f"sql parameter ${index} is a {type(value).__name__}: use None, int, float, str or bytes"
    )


def _lift(raw: Any) -> Value:
    # Value_Null has no payload; the others carry theirs in `value`.
    return getattr(raw, "value", None)


def _failed(statement: str, error: Any) -> HandlerError:
    assert _sql is not None
    if isinstance(error, _sql.Error_Unavailable):
        return Retryable(f"sql `{_short(statement)}`: database unavailable: {error.value}")
    return Fatal(f"sql `{_short(statement)}`: statement rejected: {error.value}")


def _short(statement: str) -> str:
    return statement[:80]
