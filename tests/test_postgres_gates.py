"""PostgreSQL gates against real servers: role (primary, replica and its lag), Alembic schema,
custom query. Each test drives a PostgresCheck as the prober does: run it bounded, reset it
after a failure."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from support import wait_until_async
from support.pg import PostgresCheckFactory, PostgresServer, ReplicaFactory

from sidecar.checks.postgres import PostgresCheck
from sidecar.reasons import CheckFailed, Reason

Outcome = tuple[Reason | None, dict[str, str]]
# The prober's bound on one run, as a check's timeout would be; generous for CI.
RUN_BOUND = 5.0


async def outcome(check: PostgresCheck) -> Outcome:
    """One run as the prober makes it: (None, {}) on a pass, else the reason and details."""
    try:
        async with asyncio.timeout(RUN_BOUND):
            await check.run()
    except CheckFailed as exc:
        await check.reset()
        return exc.reason, dict(exc.details)
    return None, {}


async def until_outcome(
    check: PostgresCheck, reason: Reason | None, *, within: float, period: float = 0.2
) -> Outcome:
    """Run the check every `period` seconds until it gives `reason` (None: a pass)."""
    deadline = time.monotonic() + within
    while True:
        result = await outcome(check)
        if result[0] is reason:
            return result
        assert time.monotonic() < deadline, f"not {reason} within {within}s, last {result}"
        await asyncio.sleep(period)


# ---- role -----------------------------------------------------------------------------------


async def test_require_primary_passes_on_a_primary(
    pg: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """require_primary passes against a server that is not in recovery."""
    check = make_postgres_check(pg.dsn(), require_primary=True)
    assert await outcome(check) == (None, {})


async def test_require_primary_fails_not_primary_on_a_replica(
    pg_private: PostgresServer,
    make_replica: ReplicaFactory,
    make_postgres_check: PostgresCheckFactory,
) -> None:
    """require_primary fails with not_primary on a streaming replica; a plain check passes."""
    replica = make_replica(pg_private)
    assert await outcome(make_postgres_check(replica.dsn())) == (None, {})
    check = make_postgres_check(replica.dsn(), require_primary=True)
    assert await outcome(check) == (Reason.NOT_PRIMARY, {})


async def test_lag_bound_is_met_by_a_primary(
    pg: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """allow_replica with a lag bound passes on a primary: it has no lag to measure."""
    check = make_postgres_check(pg.dsn(), allow_replica=True, max_replica_lag_seconds=0.5)
    assert await outcome(check) == (None, {})


async def test_idle_caught_up_replica_has_no_lag(
    pg_private: PostgresServer,
    make_replica: ReplicaFactory,
    make_postgres_check: PostgresCheckFactory,
) -> None:
    """A caught-up replica passes the lag bound even long after the primary's last commit."""
    pg_private.execute("CREATE TABLE beat (at timestamptz)")
    pg_private.execute("INSERT INTO beat VALUES (now())")
    replica = make_replica(pg_private)
    await asyncio.to_thread(replica.wait_caught_up)
    check = make_postgres_check(replica.dsn(), allow_replica=True, max_replica_lag_seconds=1)
    # Well past the bound since the last replayed commit: replay timestamps alone would fail.
    since_replay = "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())"
    await wait_until_async(
        lambda: float(replica.fetchval(since_replay)) > 2, timeout=15, message="2 s idle"
    )
    assert await outcome(check) == (None, {})


async def test_paused_replay_fails_replication_lag_then_heals_on_resume(
    pg_private: PostgresServer,
    make_replica: ReplicaFactory,
    make_postgres_check: PostgresCheckFactory,
) -> None:
    """Replay paused while the primary writes: replication_lag with both figures; resumed: pass."""
    pg_private.execute("CREATE TABLE beat (at timestamptz)")
    replica = make_replica(pg_private)
    # A commit replayed since the replica started: pg_last_xact_replay_timestamp() is NULL
    # until then, and the lag would be "unknown" rather than a figure.
    pg_private.execute("INSERT INTO beat VALUES (now())")
    await asyncio.to_thread(replica.wait_caught_up)
    check = make_postgres_check(replica.dsn(), allow_replica=True, max_replica_lag_seconds=1)
    assert await outcome(check) == (None, {})

    replica.execute("SELECT pg_wal_replay_pause()")
    pg_private.execute("INSERT INTO beat VALUES (now())")
    _, details = await until_outcome(check, Reason.REPLICATION_LAG, within=20)
    assert details["max_seconds"] == "1"
    assert 1 <= float(details["lag_seconds"]) < 60

    replica.execute("SELECT pg_wal_replay_resume()")
    await asyncio.to_thread(replica.wait_caught_up)
    assert await until_outcome(check, None, within=10) == (None, {})


async def test_behind_replica_with_nothing_replayed_yet_has_unknown_lag(
    pg_private: PostgresServer,
    make_replica: ReplicaFactory,
    make_postgres_check: PostgresCheckFactory,
) -> None:
    """Behind, and no commit replayed since it started: the lag is unknown, which fails."""
    pg_private.execute("CREATE TABLE beat (at timestamptz)")
    # Paused before anything is committed after the base backup (no wait_caught_up: its marker
    # would be such a commit).
    replica = make_replica(pg_private)
    replica.execute("SELECT pg_wal_replay_pause()")
    pg_private.execute("INSERT INTO beat VALUES (now())")
    check = make_postgres_check(replica.dsn(), allow_replica=True, max_replica_lag_seconds=30)
    _, details = await until_outcome(check, Reason.REPLICATION_LAG, within=20)
    assert details == {"lag_seconds": "unknown", "max_seconds": "30"}


# ---- schema ---------------------------------------------------------------------------------


@pytest.fixture
def app_db(pg: PostgresServer) -> Iterator[str]:
    """A fresh database of this test's own in the shared server; dropped afterwards."""
    name = f"app_{uuid.uuid4().hex[:12]}"
    pg.create_database(name)
    try:
        yield name
    finally:
        pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def set_revisions(pg: PostgresServer, database: str, *revisions: str) -> None:
    """alembic_version as Alembic leaves it: one row per head."""
    pg.execute(
        "CREATE TABLE IF NOT EXISTS alembic_version (version_num varchar(32) PRIMARY KEY)",
        database=database,
    )
    pg.execute("DELETE FROM alembic_version", database=database)
    for revision in revisions:
        pg.execute("INSERT INTO alembic_version VALUES ($1)", revision, database=database)


async def test_schema_at_the_expected_revision_passes(
    pg: PostgresServer, app_db: str, make_postgres_check: PostgresCheckFactory
) -> None:
    """The one Alembic head equal to the expected revision passes."""
    set_revisions(pg, app_db, "3f2a1b9c4d5e")
    check = make_postgres_check(pg.dsn(database=app_db), alembic_revisions=("3f2a1b9c4d5e",))
    assert await outcome(check) == (None, {})


async def test_several_heads_pass_in_any_order(
    pg: PostgresServer, app_db: str, make_postgres_check: PostgresCheckFactory
) -> None:
    """Two heads pass when the expected set holds exactly those two, in whatever order."""
    set_revisions(pg, app_db, "bbbb", "aaaa")
    check = make_postgres_check(pg.dsn(database=app_db), alembic_revisions=("aaaa", "bbbb"))
    assert await outcome(check) == (None, {})


async def test_schema_behind_fails_with_both_revisions_then_heals(
    pg: PostgresServer, app_db: str, make_postgres_check: PostgresCheckFactory
) -> None:
    """An older revision than the code's: schema_mismatch showing both; migrated: pass."""
    set_revisions(pg, app_db, "older0000001")
    check = make_postgres_check(pg.dsn(database=app_db), alembic_revisions=("newer0000002",))
    assert await outcome(check) == (
        Reason.SCHEMA_MISMATCH,
        {"expected": "newer0000002", "found": "older0000001"},
    )
    set_revisions(pg, app_db, "newer0000002")
    assert await outcome(check) == (None, {})


async def test_schema_ahead_fails_with_both_revisions(
    pg: PostgresServer, app_db: str, make_postgres_check: PostgresCheckFactory
) -> None:
    """A newer revision than the code's (a rollback of the code): schema_mismatch too."""
    set_revisions(pg, app_db, "newer0000002")
    check = make_postgres_check(pg.dsn(database=app_db), alembic_revisions=("older0000001",))
    assert await outcome(check) == (
        Reason.SCHEMA_MISMATCH,
        {"expected": "older0000001", "found": "newer0000002"},
    )


async def test_missing_head_of_several_fails(
    pg: PostgresServer, app_db: str, make_postgres_check: PostgresCheckFactory
) -> None:
    """One of two expected heads missing: schema_mismatch listing the sets, sorted."""
    set_revisions(pg, app_db, "aaaa")
    check = make_postgres_check(pg.dsn(database=app_db), alembic_revisions=("bbbb", "aaaa"))
    assert await outcome(check) == (
        Reason.SCHEMA_MISMATCH,
        {"expected": "aaaa,bbbb", "found": "aaaa"},
    )


async def test_missing_alembic_table_fails_as_found_none(
    pg: PostgresServer, app_db: str, make_postgres_check: PostgresCheckFactory
) -> None:
    """No alembic_version table (never migrated): schema_mismatch with found none, not an error."""
    check = make_postgres_check(pg.dsn(database=app_db), alembic_revisions=("3f2a1b9c4d5e",))
    assert await outcome(check) == (
        Reason.SCHEMA_MISMATCH,
        {"expected": "3f2a1b9c4d5e", "found": "none"},
    )
    # The aborted statement left the connection usable: the next run migrates to a pass.
    set_revisions(pg, app_db, "3f2a1b9c4d5e")
    assert await outcome(check) == (None, {})


async def test_empty_alembic_table_fails_as_found_none(
    pg: PostgresServer, app_db: str, make_postgres_check: PostgresCheckFactory
) -> None:
    """An alembic_version table with no row: schema_mismatch with found none."""
    set_revisions(pg, app_db)
    check = make_postgres_check(pg.dsn(database=app_db), alembic_revisions=("3f2a1b9c4d5e",))
    assert await outcome(check) == (
        Reason.SCHEMA_MISMATCH,
        {"expected": "3f2a1b9c4d5e", "found": "none"},
    )


# ---- custom query ---------------------------------------------------------------------------


async def test_custom_query_with_expected_result_passes(
    pg: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """A boolean true matches expect "true"."""
    check = make_postgres_check(
        pg.dsn(), query="SELECT count(*) > 0 FROM pg_stat_activity", expect="true"
    )
    assert await outcome(check) == (None, {})


@pytest.mark.parametrize(
    ("query", "expect"),
    [
        ("SELECT NULL", "null"),
        ("SELECT false", "false"),
        ("SELECT 42", "42"),
        ("SELECT 'ok'::text, 'ignored'", "ok"),
    ],
)
async def test_custom_query_values_compare_as_text(
    pg: PostgresServer, make_postgres_check: PostgresCheckFactory, query: str, expect: str
) -> None:
    """The first column of the first row, as text: NULL is null, booleans true/false."""
    check = make_postgres_check(pg.dsn(), query=query, expect=expect)
    assert await outcome(check) == (None, {})


async def test_custom_query_mismatch_fails_with_expected_and_found(
    pg: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """A different value: unexpected_result showing what was expected and what came back."""
    check = make_postgres_check(pg.dsn(), query="SELECT 1 + 1", expect="3")
    assert await outcome(check) == (Reason.UNEXPECTED_RESULT, {"expected": "3", "found": "2"})


async def test_custom_query_long_result_is_cut_in_details(
    pg: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """What the query returned is shown cut to 64 characters."""
    check = make_postgres_check(pg.dsn(), query="SELECT repeat('x', 500)", expect="y")
    assert await outcome(check) == (
        Reason.UNEXPECTED_RESULT,
        {"expected": "y", "found": "x" * 64},
    )


async def test_custom_query_without_rows_fails_when_a_value_is_expected(
    pg: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """No row at all is not the expected value: unexpected_result, found "no rows"."""
    check = make_postgres_check(pg.dsn(), query="SELECT 1 WHERE false", expect="1")
    assert await outcome(check) == (
        Reason.UNEXPECTED_RESULT,
        {"expected": "1", "found": "no rows"},
    )


async def test_custom_query_without_expect_passes_when_it_runs(
    pg: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """Without expect, a query that runs passes whatever it returns (here: no row)."""
    check = make_postgres_check(pg.dsn(), query="SELECT 1 WHERE false")
    assert await outcome(check) == (None, {})


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM no_such_table",  # a server error
        "SELECT 1/0",  # a run-time error
        "SELECT $1::int",  # refused by the client: no argument for $1
    ],
)
async def test_failing_custom_query_is_query_failed_and_recovers(
    pg: PostgresServer, make_postgres_check: PostgresCheckFactory, query: str
) -> None:
    """A query that errors fails with query_failed; the check itself is not broken by it."""
    check = make_postgres_check(pg.dsn(), query=query)
    assert await outcome(check) == (Reason.QUERY_FAILED, {})
    healthy = make_postgres_check(pg.dsn(), query="SELECT 1", expect="1")
    assert await outcome(healthy) == (None, {})


async def test_custom_query_cannot_change_data(
    pg: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """The gates run read-only: a writing query fails with query_failed and writes nothing."""
    pg.execute("CREATE TABLE IF NOT EXISTS gate_writes (n int)")
    pg.execute("TRUNCATE gate_writes")
    check = make_postgres_check(pg.dsn(), query="INSERT INTO gate_writes VALUES (1) RETURNING n")
    assert await outcome(check) == (Reason.QUERY_FAILED, {})
    assert pg.fetchval("SELECT count(*) FROM gate_writes") == 0


async def test_gates_run_in_order_role_schema_query(
    pg_private: PostgresServer,
    make_replica: ReplicaFactory,
    make_postgres_check: PostgresCheckFactory,
) -> None:
    """With every gate failing the role gate decides; without it, the schema gate does."""
    replica = make_replica(pg_private)
    gates: dict[str, Any] = {"alembic_revisions": ("abc",), "query": "SELECT 1", "expect": "2"}
    everything = make_postgres_check(replica.dsn(), require_primary=True, **gates)
    assert (await outcome(everything))[0] is Reason.NOT_PRIMARY
    schema_first = make_postgres_check(replica.dsn(), **gates)
    assert (await outcome(schema_first))[0] is Reason.SCHEMA_MISMATCH
    query_last = make_postgres_check(replica.dsn(), query="SELECT 1", expect="2")
    assert (await outcome(query_last))[0] is Reason.UNEXPECTED_RESULT


async def test_gates_keep_one_session_across_runs(
    pg_private: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """With gates configured the check still holds exactly one session, reused run after run."""
    set_revisions(pg_private, "postgres", "abc")
    check = make_postgres_check(
        pg_private.dsn(),
        require_primary=True,
        alembic_revisions=("abc",),
        query="SELECT 1",
        expect="1",
    )
    for _ in range(5):
        assert await outcome(check) == (None, {})
    assert pg_private.sessions() == 1
    pids = pg_private.backend_pids()
    assert await outcome(check) == (None, {})
    assert pg_private.backend_pids() == pids
