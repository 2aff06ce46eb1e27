"""Statements that build the new table as a faithful copy of a :class:`TableDefinition`.

Deparsed catalogue text (column types, defaults, constraint, index and trigger definitions,
policy expressions) is reused as SQL; every name this module chooses goes through
``psycopg.sql.Identifier`` and every comment through ``psycopg.sql.Literal``.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from jobs.rechunk.catalog import Column, Index, Policy, TableDefinition, View, q
from jobs.rechunk.errors import RechunkRefusedError

_MAX_IDENTIFIER = 63
_STORAGE = {"p": "PLAIN", "e": "EXTERNAL", "x": "EXTENDED", "m": "MAIN"}
_COMPRESSION = {"p": "pglz", "l": "lz4"}
# What psycopg executes: a plain statement or a composed one.
Statement = sql.SQL | sql.Composed
_POLICY_COMMAND = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}


@dataclass(frozen=True)
class Names:
    """Every name one run gives to tables, indexes, functions and triggers."""

    run_id: int

    @property
    def tag(self) -> str:
        return f"rc{self.run_id}"

    def _checked(self, name: str) -> str:
        if len(name.encode()) > _MAX_IDENTIFIER:
            raise RechunkRefusedError(f"the name {name!r} would be longer than 63 bytes")
        return name

    def shadow(self, name: str) -> str:
        """The new table (and its indexes) while it is being filled, and after a rollback."""
        return self._checked(f"{name}_{self.tag}")

    def retired(self, name: str) -> str:
        """The old table (and its indexes) between cutover and finalize."""
        return self._checked(f"{name}_{self.tag}_old")

    @property
    def to_new_function(self) -> str:
        return f"rechunk_{self.tag}_to_new"

    @property
    def to_old_function(self) -> str:
        return f"rechunk_{self.tag}_to_old"

    @property
    def mirror_trigger(self) -> str:
        return f"rechunk_{self.tag}_mirror"

    @property
    def guard_trigger(self) -> str:
        return f"rechunk_{self.tag}_guard"

    @property
    def guard_truncate_trigger(self) -> str:
        return f"rechunk_{self.tag}_guard_truncate"


def _column(column: Column) -> sql.Composable:
    if column.identity:
        raise RechunkRefusedError(
            f"column {column.name} is an identity column: not supported by the re-chunk"
        )
    parts: list[sql.Composable] = [sql.Identifier(column.name), sql.SQL(column.type)]
    if column.collation is not None:
        parts.append(sql.SQL("COLLATE {}").format(sql.Identifier(*column.collation)))
    if column.generated:
        parts.append(
            sql.SQL("GENERATED ALWAYS AS ({}) STORED").format(sql.SQL(column.default or ""))
        )
    elif column.default is not None:
        parts.append(sql.SQL("DEFAULT {}").format(sql.SQL(column.default)))
    if column.not_null:
        parts.append(sql.SQL("NOT NULL"))
    return sql.SQL(" ").join(parts)


def create_table(table: TableDefinition, target: sql.Identifier) -> list[Statement]:
    """The plain table (columns, check and foreign-key constraints, storage, comments)."""
    statements: list[Statement] = []
    options = (
        sql.SQL(" WITH ({})").format(sql.SQL(", ").join(sql.SQL(o) for o in table.options))
        if table.options
        else sql.SQL("")
    )
    statements.append(
        sql.SQL("CREATE TABLE {} ({}){}").format(
            target, sql.SQL(", ").join(_column(c) for c in table.columns), options
        )
    )
    for column in table.columns:
        name = sql.Identifier(column.name)
        if column.statistics is not None:
            statements.append(
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STATISTICS {}").format(
                    target, name, sql.Literal(column.statistics)
                )
            )
        if column.storage is not None:
            statements.append(
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STORAGE {}").format(
                    target, name, sql.SQL(_STORAGE[column.storage])
                )
            )
        if column.compression is not None:
            statements.append(
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET COMPRESSION {}").format(
                    target, name, sql.SQL(_COMPRESSION[column.compression])
                )
            )
        if column.comment is not None:
            statements.append(
                sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(
                    target, name, sql.Literal(column.comment)
                )
            )
    for constraint in table.constraints:
        if constraint.kind in ("c", "f"):
            statements.append(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                    target, sql.Identifier(constraint.name), sql.SQL(constraint.definition)
                )
            )
            if constraint.comment is not None:
                statements.append(
                    sql.SQL("COMMENT ON CONSTRAINT {} ON {} IS {}").format(
                        sql.Identifier(constraint.name), target, sql.Literal(constraint.comment)
                    )
                )
    if table.replica_identity == "f":
        statements.append(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(target))
    elif table.replica_identity == "n":
        statements.append(sql.SQL("ALTER TABLE {} REPLICA IDENTITY NOTHING").format(target))
    if table.comment is not None:
        statements.append(
            sql.SQL("COMMENT ON TABLE {} IS {}").format(target, sql.Literal(table.comment))
        )
    return statements


def _index(index: Index, source_qualified: str, target: sql.Identifier, name: str) -> sql.Composed:
    marker = f" ON {source_qualified} "
    head, found, rest = index.definition.partition(marker)
    if not found or " INDEX " not in head:
        raise RechunkRefusedError(f"cannot read the definition of index {index.name}")
    create = head[: head.index(" INDEX ")]  # "CREATE" or "CREATE UNIQUE"
    return sql.SQL("{} INDEX {} ON {} {}").format(
        sql.SQL(create), sql.Identifier(name), target, sql.SQL(rest)
    )


def create_indexes(
    table: TableDefinition, source_qualified: str, target: sql.Identifier, names: Names
) -> list[Statement]:
    """Unique, primary-key and exclusion constraints and plain indexes, under the run's names.

    Index names share the schema's namespace with the live table's, hence temporary names,
    swapped at cutover.
    """
    statements: list[Statement] = []
    for constraint in table.constraints:
        if constraint.kind in ("u", "p", "x"):
            temporary = names.shadow(constraint.name)
            statements.append(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                    target, sql.Identifier(temporary), sql.SQL(constraint.definition)
                )
            )
            if constraint.comment is not None:
                statements.append(
                    sql.SQL("COMMENT ON CONSTRAINT {} ON {} IS {}").format(
                        sql.Identifier(temporary), target, sql.Literal(constraint.comment)
                    )
                )
    for index in table.indexes:
        if index.constraint_backed:
            continue
        temporary = names.shadow(index.name)
        statements.append(_index(index, source_qualified, target, temporary))
        if index.comment is not None:
            statements.append(
                sql.SQL("COMMENT ON INDEX {} IS {}").format(
                    sql.Identifier(table.schema, temporary), sql.Literal(index.comment)
                )
            )
    return statements


def _grantee(role: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if role == "" else sql.Identifier(role)


def _policy(policy: Policy, target: sql.Identifier) -> sql.Composed:
    statement = sql.SQL("CREATE POLICY {} ON {} AS {} FOR {} TO {}").format(
        sql.Identifier(policy.name),
        target,
        sql.SQL("PERMISSIVE" if policy.permissive else "RESTRICTIVE"),
        sql.SQL(_POLICY_COMMAND[policy.command]),
        sql.SQL(", ").join(_grantee(r) for r in policy.roles),
    )
    if policy.using is not None:
        statement = sql.SQL("{} USING ({})").format(statement, sql.SQL(policy.using))
    if policy.with_check is not None:
        statement = sql.SQL("{} WITH CHECK ({})").format(statement, sql.SQL(policy.with_check))
    return statement


def access(table: TableDefinition, target: sql.Identifier, owner: str) -> list[Statement]:
    """Owner, grants and policies. Row-level security itself is switched on at cutover: the
    copy and the dual write must never be filtered by a policy."""
    statements: list[Statement] = []
    if table.owner != owner:
        statements.append(
            sql.SQL("ALTER TABLE {} OWNER TO {}").format(target, sql.Identifier(table.owner))
        )
    for grant in table.grants:
        columns = (
            sql.SQL(" ({})").format(sql.Identifier(grant.column)) if grant.column else sql.SQL("")
        )
        statements.append(
            sql.SQL("GRANT {}{} ON TABLE {} TO {}{}").format(
                sql.SQL(grant.privilege),
                columns,
                target,
                _grantee(grant.grantee),
                sql.SQL(" WITH GRANT OPTION" if grant.grantable else ""),
            )
        )
    for policy in table.policies:
        statements.append(_policy(policy, target))
        if policy.comment is not None:
            statements.append(
                sql.SQL("COMMENT ON POLICY {} ON {} IS {}").format(
                    sql.Identifier(policy.name), target, sql.Literal(policy.comment)
                )
            )
    return statements


def at_cutover(table: TableDefinition, live: sql.Identifier, *, security: bool) -> list[Statement]:
    """What the new table gets only once it is the live one: row-level security and the
    user triggers (they would otherwise fire again for every historical row copied)."""
    statements: list[Statement] = []
    if security and table.row_security:
        statements.append(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(live))
    if security and table.force_row_security:
        statements.append(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(live))
    for trigger in table.triggers:
        # Deparsed against the live name, which the new table now carries.
        statements.append(sql.SQL(trigger.definition))  # catalogue text
        if trigger.comment is not None:
            statements.append(
                sql.SQL("COMMENT ON TRIGGER {} ON {} IS {}").format(
                    sql.Identifier(trigger.name), live, sql.Literal(trigger.comment)
                )
            )
    return statements


def own_sequences(table: TableDefinition, live: sql.Identifier) -> list[Statement]:
    """Serial columns' sequences follow the live name (the new table after a cutover, the old
    one after a rollback), so dropping the other table never drops them."""
    return [
        sql.SQL("ALTER SEQUENCE {} OWNED BY {}.{}").format(
            sql.SQL(sequence),  # regclass text from the catalogue
            live,
            sql.Identifier(column),
        )
        for sequence, column in table.owned_sequences
    ]


def replace_views(views: list[View]) -> list[Statement]:
    """The same views again, now resolving the table's name to the table that carries it."""
    statements: list[Statement] = []
    for view in views:
        options = (
            sql.SQL(" WITH ({})").format(sql.SQL(", ").join(sql.SQL(o) for o in view.options))
            if view.options
            else sql.SQL("")
        )
        statements.append(
            sql.SQL("CREATE OR REPLACE VIEW {}{} AS {}").format(
                sql.SQL(view.name), options, sql.SQL(view.definition)
            )
        )
    return statements


def move_invalidation_trigger(
    function: str | None, *, outgoing: sql.Identifier, incoming: sql.Identifier, hypertable_id: int
) -> list[Statement]:
    """TimescaleDB's invalidation trigger leaves the table the aggregates no longer read and is
    created on the one they now read, with its hypertable id (none when the database collects
    invalidations from the WAL instead)."""
    if function is None:
        return []
    return [
        sql.SQL(q("drop_invalidation_trigger")).format(table=outgoing),
        sql.SQL(q("create_invalidation_trigger")).format(
            table=incoming,
            function=sql.SQL(function),  # regproc text from the catalogue
            hypertable_id=sql.Literal(str(hypertable_id)),
        ),
    ]


def drop_user_triggers(table: TableDefinition, on: sql.Identifier) -> list[Statement]:
    """The old table only receives mirrored rows between cutover and finalize: their triggers'
    effects already happened on the live table. (TimescaleDB cannot disable a trigger on a
    hypertable, so they are dropped here and created again by a rollback.)"""
    return [
        sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(t.name), on) for t in table.triggers
    ]
