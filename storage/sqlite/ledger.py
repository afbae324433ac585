"""The default ledger backend: one SQLite file in WAL mode, one `BEGIN IMMEDIATE` transaction per
reserve or settle.

`BEGIN IMMEDIATE` takes the write lock before reading, so two processes sharing the file (several
uvicorn workers) serialise their check-and-hold exactly like the Redis script does. A call first
runs on the event loop's thread without waiting for the lock (~0.1 ms); only if another
connection holds it does it move to a worker thread that waits, so the loop never blocks on it
(`storage.sqlite.database`). With WAL and `synchronous=NORMAL` a committed settle survives a
killed process (only an OS crash can lose the last commits); `synchronous="FULL"` trades
throughput for power-loss safety.

Tables: `spend` (per tenant, window and bucket: the aggregates budgets are checked against),
`settlements` (the journal: one row per settled wave, also the idempotency key),
`reservations` (live holds with an expiry), `spend_logs` (one row per request, summed by
each of its settles in the same transaction; `model_wave` is the wave that last named its
`model`), `spend_log_models` (the same sums per request and model, in the same transaction: a
route's waves each booked to the model that drew them) and `rate_requests` (the `rpm` sliding
log: one row per admitted request and level, dropped once it is older than the window;
`rate_counts` keeps each level's row count in the same transactions).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from controller.budget.ledger import (
    Hold,
    Limit,
    ModelSpend,
    RequestLimit,
    RequestUsage,
    ReserveOutcome,
    SettleOutcome,
    SpendRecord,
    WindowUsage,
    fit_samples,
    scopes_of,
)
from controller.budget.pricing import ZERO, Cost
from storage.sqlite.database import SQLiteDatabase

PURGE_EVERY_S = 1.0  # delete expired holds at most this often (ledger clock)

SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    tenant TEXT NOT NULL, win TEXT NOT NULL, bucket INTEGER NOT NULL,
    money REAL NOT NULL DEFAULT 0, flops REAL NOT NULL DEFAULT 0,
    tokens REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, win, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (
    tenant TEXT NOT NULL, request_id TEXT NOT NULL, wave INTEGER NOT NULL,
    money REAL NOT NULL, flops REAL NOT NULL, granted INTEGER NOT NULL, expires_at REAL NOT NULL,
    scope TEXT NOT NULL DEFAULT '', tokens REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, request_id, wave, scope)
);
CREATE INDEX IF NOT EXISTS reservations_expiry ON reservations (expires_at);
CREATE TABLE IF NOT EXISTS spend_logs (
    tenant TEXT NOT NULL, request_id TEXT NOT NULL, time REAL NOT NULL, model TEXT NOT NULL,
    key_prefix TEXT, user TEXT, samples INTEGER NOT NULL, waves INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    money REAL NOT NULL, flops REAL NOT NULL, stop_reason TEXT, status INTEGER,
    model_wave INTEGER NOT NULL DEFAULT -1,
    PRIMARY KEY (tenant, request_id)
);
CREATE INDEX IF NOT EXISTS spend_logs_time ON spend_logs (tenant, time);
CREATE TABLE IF NOT EXISTS spend_log_models (
    tenant TEXT NOT NULL, request_id TEXT NOT NULL, model TEXT NOT NULL,
    samples INTEGER NOT NULL, waves INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    money REAL NOT NULL, flops REAL NOT NULL,
    PRIMARY KEY (tenant, request_id, model)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS settlements (
    tenant TEXT NOT NULL, request_id TEXT NOT NULL, wave INTEGER NOT NULL,
    money REAL NOT NULL, flops REAL NOT NULL, settled_at REAL NOT NULL,
    tokens REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, request_id, wave)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rate_requests (
    tenant TEXT NOT NULL, scope TEXT NOT NULL, request_id TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (tenant, scope, request_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rate_requests_at ON rate_requests (tenant, scope, at);
CREATE TABLE IF NOT EXISTS rate_counts (
    tenant TEXT NOT NULL, scope TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (tenant, scope)
) WITHOUT ROWID;
"""


class SQLiteStore:
    """`LedgerStore` on one SQLite file (created with its parent folder if missing)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        busy_timeout_ms: int = 10_000,
    ) -> None:
        self._db = SQLiteDatabase(
            path,
            _prepare,
            thread_name="t2-ledger-sqlite",
            busy_timeout_ms=busy_timeout_ms,
            synchronous=synchronous,
            inline=True,  # the hot path: try each step on the loop's thread first
        )
        self.path = self._db.path
        self._run = self._db.run
        self._purged_at = -math.inf

    # -- the atomic steps ------------------------------------------------------------------

    async def reserve(self, hold: Hold) -> ReserveOutcome:
        return await self._run(lambda c: self._reserve(c, hold))

    def _reserve(self, c: sqlite3.Connection, h: Hold) -> ReserveOutcome:
        if not self._purged_at <= h.now < self._purged_at + PURGE_EVERY_S:
            self._purge(c, h.now)  # housekeeping only: expired holds never count anyway
            self._purged_at = h.now
        row = c.execute(
            "SELECT money, flops, granted, tokens FROM reservations "
            "WHERE tenant=? AND request_id=? AND wave=? AND expires_at>? AND scope=''",
            (h.tenant, h.request_id, h.wave, h.now),
        ).fetchone()
        if row is not None:  # a retried reserve: answer as the first time did
            usage = self._usage(c, h.tenant, h.limits, h.now)
            requests = self._requests(c, h.tenant, h.request_limits, h.now, h.count_request)
            held = Cost(row[0], row[1], row[3])
            return ReserveOutcome(int(row[2]), held, None, usage, [r for r, _ in requests])
        usage = self._usage(c, h.tenant, h.limits, h.now)
        requests = self._requests(c, h.tenant, h.request_limits, h.now, h.count_request)
        full = next((r for r, seen in requests if not seen and r.remaining < 1), None)
        if full is not None:  # rpm: this request would be one too many
            return ReserveOutcome(0, ZERO, full.name, usage, [r for r, _ in requests])
        granted, binding = fit_samples(h.samples, h.fixed, h.per_sample, usage)
        held = ZERO
        if granted >= 1:  # held at every level: it counts against each level's windows
            held = h.fixed + h.per_sample.scale(granted)
            expires = h.now + h.ttl_s
            c.executemany(
                "INSERT OR REPLACE INTO reservations (tenant, request_id, wave, money, flops, "
                "granted, expires_at, scope, tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        *(h.tenant, h.request_id, h.wave, held.money, held.flops, granted, expires),
                        s,
                        held.tokens,
                    )
                    for s in scopes_of(h.limits)
                ],
            )
            for u in usage:
                u.reserved = u.reserved + held
            for r, seen in requests:  # admitted: the request enters each level's rpm log
                if not seen:
                    c.execute(
                        "INSERT OR IGNORE INTO rate_requests VALUES (?, ?, ?, ?)",
                        (h.tenant, r.limit.scope, h.count_request, h.now),
                    )
                    c.execute(
                        "INSERT INTO rate_counts VALUES (?, ?, 1) "
                        "ON CONFLICT (tenant, scope) DO UPDATE SET n = n + 1",
                        (h.tenant, r.limit.scope),
                    )
                    r.count += 1
                    r.oldest = h.now if r.oldest is None else r.oldest
        return ReserveOutcome(granted, held, binding, usage, [r for r, _ in requests])

    async def settle(self, hold: Hold, cost: Cost) -> SettleOutcome:
        return await self._run(lambda c: self._settle(c, hold, cost))

    def _settle(self, c: sqlite3.Connection, h: Hold, cost: Cost) -> SettleOutcome:
        tenant, limits, now = h.tenant, h.limits, h.now
        key = (tenant, h.request_id, h.wave)
        c.execute("DELETE FROM reservations WHERE tenant=? AND request_id=? AND wave=?", key)
        fresh = c.execute(
            "INSERT OR IGNORE INTO settlements (tenant, request_id, wave, money, flops, "
            "settled_at, tokens) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (*key, cost.money, cost.flops, now, cost.tokens),
        ).rowcount
        if not fresh:  # settled before: answer with what was charged then
            row = c.execute(
                "SELECT money, flops, tokens FROM settlements "
                "WHERE tenant=? AND request_id=? AND wave=?",
                key,
            ).fetchone()
            charged = Cost(row[0], row[1], row[2])
            return SettleOutcome(charged, True, self._usage(c, tenant, limits, now))
        c.executemany(
            "INSERT INTO spend (tenant, win, bucket, money, flops, tokens) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, win, bucket) DO UPDATE SET "
            "money = money + excluded.money, flops = flops + excluded.flops, "
            "tokens = tokens + excluded.tokens",
            [
                (tenant, lim.key, lim.bucket, cost.money, cost.flops, cost.tokens)
                for lim in _distinct(limits)
            ],
        )
        if h.entry is not None:  # the request's log record, in the settle's own transaction
            self._log(c, h, cost)
        for lim in limits:  # rolling windows' old buckets no longer count: keep the table small
            if lim.span.rolling:
                c.execute(
                    "DELETE FROM spend WHERE tenant=? AND win=? AND bucket<?",
                    (tenant, lim.key, lim.cutoff),
                )
        return SettleOutcome(cost, False, self._usage(c, tenant, limits, now))

    @staticmethod
    def _log(c: sqlite3.Connection, h: Hold, cost: Cost) -> None:
        """Add a settled entry to its request's record and to the record's row for its model.
        A generation entry names the record's `model` unless a later wave already did."""
        e = h.entry
        assert e is not None
        figures = (e.samples, e.waves, e.prompt_tokens, e.completion_tokens, cost.money, cost.flops)
        names = e.waves >= 1
        c.execute(
            "INSERT INTO spend_logs (tenant, request_id, time, model, key_prefix, user, samples, "
            "waves, prompt_tokens, completion_tokens, money, flops, model_wave) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (tenant, request_id) DO UPDATE SET samples = samples + "
            "excluded.samples, waves = waves + excluded.waves, "
            "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
            "completion_tokens = completion_tokens + excluded.completion_tokens, "
            "money = money + excluded.money, "
            "flops = flops + excluded.flops, "
            "model = CASE WHEN ? AND excluded.model_wave >= model_wave "
            "THEN excluded.model ELSE model END, "
            "model_wave = CASE WHEN ? AND excluded.model_wave >= model_wave "
            "THEN excluded.model_wave ELSE model_wave END",
            (
                h.tenant,
                h.request_id,
                h.now,
                e.model,
                e.key_prefix,
                e.user,
                *figures,
                h.wave if names else -1,
                names,
                names,
            ),
        )
        c.execute(
            "INSERT INTO spend_log_models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (tenant, request_id, model) DO UPDATE SET "
            "samples = samples + excluded.samples, waves = waves + excluded.waves, "
            "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
            "completion_tokens = completion_tokens + excluded.completion_tokens, "
            "money = money + excluded.money, flops = flops + excluded.flops",
            (h.tenant, h.request_id, e.model, *figures),
        )

    async def release(self, tenant: str, request_id: str, wave: int) -> None:
        def go(c: sqlite3.Connection) -> None:
            c.execute(
                "DELETE FROM reservations WHERE tenant=? AND request_id=? AND wave=?",
                (tenant, request_id, wave),
            )

        await self._run(go)

    async def usage(self, tenant: str, limits: Sequence[Limit], now: float) -> list[WindowUsage]:
        def go(c: sqlite3.Connection) -> list[WindowUsage]:
            self._purge(c, now)
            return self._usage(c, tenant, limits, now)

        return await self._run(go)

    async def purge_expired(self, now: float) -> int:
        return await self._run(lambda c: self._purge(c, now))

    async def requests(
        self, tenant: str, limits: Sequence[RequestLimit], now: float
    ) -> list[RequestUsage]:
        def go(c: sqlite3.Connection) -> list[RequestUsage]:
            return [r for r, _ in self._requests(c, tenant, limits, now, None)]

        return await self._run(go)

    async def reserved_holds(self, tenant: str | None = None) -> int:
        def go(c: sqlite3.Connection) -> int:
            if tenant is None:
                row = c.execute("SELECT count(*) FROM reservations WHERE scope=''").fetchone()
            else:
                row = c.execute(
                    "SELECT count(*) FROM reservations WHERE tenant=? AND scope=''", (tenant,)
                ).fetchone()
            return int(row[0])

        return await self._run(go)

    async def finish_log(
        self, tenant: str, request_id: str, stop_reason: str | None, status: int, samples: int
    ) -> None:
        def go(c: sqlite3.Connection) -> None:
            key = (tenant, request_id)
            c.execute(
                "UPDATE spend_logs SET stop_reason=?, status=?, samples=? "
                "WHERE tenant=? AND request_id=?",
                (stop_reason, status, samples, *key),
            )
            # the last model's samples: the drawn ones its earlier models' waves did not draw
            c.execute(
                "UPDATE spend_log_models SET samples = max(0, ? - (SELECT coalesce(sum("
                "o.samples), 0) FROM spend_log_models o WHERE o.tenant=spend_log_models.tenant "
                "AND o.request_id=spend_log_models.request_id AND o.model!=spend_log_models.model"
                ")) WHERE tenant=? AND request_id=? AND model=("
                "SELECT model FROM spend_logs WHERE tenant=? AND request_id=?)",
                (samples, *key, *key),
            )

        await self._run(go)

    async def spend_logs(self, tenant: str, since: float, until: float) -> list[SpendRecord]:
        def go(c: sqlite3.Connection) -> list[SpendRecord]:
            window = (tenant, since, until)
            rows = c.execute(
                "SELECT request_id, tenant, time, model, key_prefix, user, samples, waves, "
                "prompt_tokens, completion_tokens, money, flops, stop_reason, status "
                "FROM spend_logs WHERE tenant=? AND time>=? AND time<? "
                "ORDER BY time, request_id",
                window,
            ).fetchall()
            parts: dict[str, dict[str, ModelSpend]] = {}
            for rid, model, *figures in c.execute(
                "SELECT m.request_id, m.model, m.samples, m.waves, m.prompt_tokens, "
                "m.completion_tokens, m.money, m.flops FROM spend_log_models m "
                "JOIN spend_logs l ON l.tenant=m.tenant AND l.request_id=m.request_id "
                "WHERE l.tenant=? AND l.time>=? AND l.time<? ORDER BY m.model",
                window,
            ):
                parts.setdefault(rid, {})[model] = ModelSpend(*figures)
            out = [SpendRecord(*r) for r in rows]
            for rec in out:  # a record from before the breakdown has no rows: it reads as
                rec.by_model = parts.get(rec.request_id) or rec.by_model  # its one model's
            return out

        return await self._run(go)

    async def purge_logs(self, before: float) -> int:
        def go(c: sqlite3.Connection) -> int:
            c.execute(
                "DELETE FROM spend_log_models WHERE (tenant, request_id) IN "
                "(SELECT tenant, request_id FROM spend_logs WHERE time < ?)",
                (before,),
            )
            return int(c.execute("DELETE FROM spend_logs WHERE time < ?", (before,)).rowcount)

        return await self._run(go)

    async def close(self) -> None:
        await self._db.close()

    # -- helpers (inside a transaction) ---------------------------------------------------

    @staticmethod
    def _purge(c: sqlite3.Connection, now: float) -> int:
        return c.execute("DELETE FROM reservations WHERE expires_at <= ?", (now,)).rowcount

    @staticmethod
    def _requests(
        c: sqlite3.Connection,
        tenant: str,
        limits: Sequence[RequestLimit],
        now: float,
        request_id: str | None,
    ) -> list[tuple[RequestUsage, bool]]:
        """Each level's rpm log at `now` (entries older than the window dropped first), and
        whether `request_id` is in it already (admitted by an earlier job or wave). The count
        is kept in `rate_counts` beside the log, so a busy level costs no scan of its log."""
        out: list[tuple[RequestUsage, bool]] = []
        for lim in limits:
            key = (tenant, lim.scope)
            gone = c.execute(
                "DELETE FROM rate_requests WHERE tenant=? AND scope=? AND at<=?",
                (*key, now - lim.window_s),
            ).rowcount
            if gone:
                c.execute(
                    "UPDATE rate_counts SET n = n - ? WHERE tenant=? AND scope=?", (gone, *key)
                )
            row = c.execute("SELECT n FROM rate_counts WHERE tenant=? AND scope=?", key).fetchone()
            count = row[0] if row else 0
            oldest = c.execute(
                "SELECT min(at) FROM rate_requests WHERE tenant=? AND scope=?", key
            ).fetchone()[0]
            seen = request_id is not None and (
                c.execute(
                    "SELECT 1 FROM rate_requests WHERE tenant=? AND scope=? AND request_id=?",
                    (tenant, lim.scope, request_id),
                ).fetchone()
                is not None
            )
            out.append((RequestUsage(lim, int(count), oldest), seen))
        return out

    @staticmethod
    def _usage(
        c: sqlite3.Connection, tenant: str, limits: Sequence[Limit], now: float
    ) -> list[WindowUsage]:
        """Live holds and each window's spend, in one statement of primary-key range scans."""
        scopes = scopes_of(limits)
        held = (
            "SELECT '~held' || ?, coalesce(sum(money), 0), coalesce(sum(flops), 0), NULL, "
            "coalesce(sum(tokens), 0) FROM reservations WHERE tenant=? AND expires_at>? AND scope=?"
        )
        part = (
            "SELECT win, sum(money), sum(flops), min(bucket), sum(tokens) FROM spend "
            "WHERE tenant=? AND win=? AND bucket>=?"
        )
        params: list[object] = []
        for scope in scopes:
            params += [scope, tenant, now, scope]
        for lim in limits:
            params += [tenant, lim.key, lim.cutoff]
        sql = " UNION ALL ".join([held] * len(scopes) + [part] * len(limits))
        rows = c.execute(sql, params).fetchall()
        by_win = {r[0]: r for r in rows if r[0] is not None}
        reserved = {s: Cost(*(float(by_win["~held" + s][i]) for i in (1, 2, 4))) for s in scopes}
        out: list[WindowUsage] = []
        for lim in limits:
            row = by_win.get(lim.key)
            if row is None:
                out.append(WindowUsage(lim, Cost(), reserved[lim.scope], None))
            else:
                spent = Cost(float(row[1]), float(row[2]), float(row[4]))
                out.append(WindowUsage(lim, spent, reserved[lim.scope], float(row[3])))
        return out


def _prepare(conn: sqlite3.Connection) -> None:
    _migrate(conn)
    conn.executescript(SCHEMA)


def _migrate(conn: sqlite3.Connection) -> None:
    """Files from before budget levels: their reservations table has no `scope`. Holds are
    short-lived, so the table is recreated (holds live at the upgrade lapse, as after a crash).
    Files from before rate limits: `tokens` is added to the tables that count them (0 so far).
    Files from before the per-model breakdown: `spend_logs` gets `model_wave` (their records
    keep the model they named; `spend_log_models` is created empty, and a record without rows
    there reads as all its first model's, as it was booked)."""
    cols = [r[1] for r in conn.execute("PRAGMA table_info(reservations)").fetchall()]
    if cols and "scope" not in cols:
        conn.execute("DROP TABLE reservations")
    for table in ("spend", "reservations", "settlements"):
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()]
        if cols and "tokens" not in cols:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN tokens REAL NOT NULL DEFAULT 0")
    cols = [r[1] for r in conn.execute("PRAGMA table_info(spend_logs)").fetchall()]
    if cols and "model_wave" not in cols:
        conn.execute("ALTER TABLE spend_logs ADD COLUMN model_wave INTEGER NOT NULL DEFAULT -1")


def _distinct(limits: Sequence[Limit]) -> list[Limit]:
    seen: dict[str, Limit] = {}
    for lim in limits:
        seen.setdefault(lim.key, lim)
    return list(seen.values())
