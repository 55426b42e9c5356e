"""INSERT ... ON CONFLICT DO UPDATE statements (SQLite and PostgreSQL), each built once.

Building one per write cost a twentieth of the server's time under load: `Insert.excluded`
makes a new alias of the table each time, and a new statement computes its cache key again. A
statement built once is executed with its rows as parameters (one dict, or a list for several
rows); SQLAlchemy compiles it once per set of columns given.
"""

from __future__ import annotations

import functools

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

INSERTS = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}


def supported(engine: sa.Engine) -> bool:
    return engine.name in INSERTS


@functools.cache
def upsert(
    dialect: str, table: sa.Table, key: tuple[str, ...], update: tuple[str, ...]
) -> sa.Insert:
    """Insert a row, or on a conflict on `key` set its `update` columns to the given values."""
    insert = INSERTS[dialect](table)
    return insert.on_conflict_do_update(
        index_elements=list(key), set_={column: insert.excluded[column] for column in update}
    )


@functools.cache
def upsert_now(dialect: str, table: sa.Table, key: str, column: str) -> sa.Insert:
    """Insert a row with `column` set to the database's now, or set it so on a conflict on
    `key`; executed with {key: value}."""
    insert = INSERTS[dialect](table).values({key: sa.bindparam(key), column: sa.func.now()})
    return insert.on_conflict_do_update(index_elements=[key], set_={column: sa.func.now()})
