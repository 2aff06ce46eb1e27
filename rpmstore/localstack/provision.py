"""Cluster-level provisioning done with the superuser: login roles and the application database.

Utility statements (CREATE ROLE / DATABASE) take no bind parameters, so names are composed as
``sql.Identifier`` and the password as ``sql.Literal`` (quoted by libpq, never by string
formatting).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

ROLE_EXISTS = "SELECT 1 FROM pg_roles WHERE rolname = %s"
DATABASE_EXISTS = "SELECT 1 FROM pg_database WHERE datname = %s"
CREATE_ROLE = sql.SQL("CREATE ROLE {role} LOGIN PASSWORD {password}")
SET_ROLE_PASSWORD = sql.SQL("ALTER ROLE {role} PASSWORD {password}")
CREATE_DATABASE = sql.SQL("CREATE DATABASE {database} OWNER {role}")
CREATE_DATABASE_FROM_TEMPLATE = sql.SQL(
    "CREATE DATABASE {database} OWNER {role} TEMPLATE {template}"
)
DROP_DATABASE = sql.SQL("DROP DATABASE IF EXISTS {database} WITH (FORCE)")
# TimescaleDB is not a trusted extension: only a superuser can create it, once per database.
CREATE_TIMESCALEDB = "CREATE EXTENSION IF NOT EXISTS timescaledb"
# A database that is used as a template must have no sessions, and TimescaleDB's scheduler
# keeps one open in every database that accepts connections.
CLOSE_TEMPLATE = sql.SQL("ALTER DATABASE {database} WITH ALLOW_CONNECTIONS false IS_TEMPLATE true")
TERMINATE_SESSIONS = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE datname = %s AND pid <> pg_backend_pid()"
)


def ensure_login_role(admin: psycopg.Connection, role: str, password: str) -> None:
    """Create a login role (the owner, or the API's), or reset its password.

    CREATE ROLE's defaults are what both need: not a superuser, no BYPASSRLS, no CREATEROLE.
    """
    params = {"role": sql.Identifier(role), "password": sql.Literal(password)}
    if admin.execute(ROLE_EXISTS, (role,)).fetchone() is None:
        admin.execute(CREATE_ROLE.format(**params))
    else:
        admin.execute(SET_ROLE_PASSWORD.format(**params))


def ensure_database(admin: psycopg.Connection, database: str, owner: str) -> bool:
    """Create the database if missing; return whether it was created."""
    if admin.execute(DATABASE_EXISTS, (database,)).fetchone() is not None:
        return False
    admin.execute(
        CREATE_DATABASE.format(database=sql.Identifier(database), role=sql.Identifier(owner))
    )
    return True


def ensure_timescaledb(admin_on_database: psycopg.Connection) -> None:
    admin_on_database.execute(CREATE_TIMESCALEDB)


def close_as_template(admin: psycopg.Connection, database: str) -> None:
    """Make ``database`` cloneable: no new sessions, existing ones (the scheduler) ended."""
    admin.execute(CLOSE_TEMPLATE.format(database=sql.Identifier(database)))
    admin.execute(TERMINATE_SESSIONS, (database,))


def clone_database(admin: psycopg.Connection, *, template: str, database: str, owner: str) -> None:
    admin.execute(
        CREATE_DATABASE_FROM_TEMPLATE.format(
            database=sql.Identifier(database),
            role=sql.Identifier(owner),
            template=sql.Identifier(template),
        )
    )


def drop_database(admin: psycopg.Connection, database: str) -> None:
    admin.execute(DROP_DATABASE.format(database=sql.Identifier(database)))
