"""The admin store's contract on both real backends (a SQLite file, a real redis-server):
overrides and keys survive a reopen, every change bumps the version, labels stay unique among
live keys, revocation keeps the earliest time, rotation is one step that either fully
happens or not at all (a revoked or expired key is refused in that same step), and a tenant
made or deleted through the API is one step that leaves no override or live key behind."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from controller.budget.admin_state import (
    AdminStore,
    DuplicateLabel,
    KeyNotFound,
    KeyNotLive,
    Override,
    StoredKey,
    StoredTenant,
    TenantExists,
    TenantNotFound,
    TooManyTenants,
)
from storage import Stores

NOW = 1_800_000_000.0


@pytest.fixture(params=["sqlite", "redis"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], AdminStore]:
    if request.param == "sqlite":
        return Stores("sqlite", path=tmp_path / "ledger.sqlite").admin
    url = request.getfixturevalue("redis_url")
    return Stores("redis", url=url).admin


@pytest.fixture
async def store(opener: Callable[[], AdminStore]) -> AsyncIterator[AdminStore]:
    s = opener()
    yield s
    await s.close()


def key(sha: str, label: str = "ci", tenant: str = "acme", **kw: object) -> StoredKey:
    return StoredKey(sha, tenant, f"t2-{sha[:6]}", label, NOW, **kw)  # type: ignore[arg-type]


async def test_changes_bump_the_version_and_survive_a_reopen(
    store: AdminStore, opener: Callable[[], AdminStore]
) -> None:
    assert await store.version() == 0
    day = {"limit": 5.0, "unit": "currency", "hard": True, "rolling": False}
    v1 = await store.put_overrides([Override("acme", "day", day, None, NOW)])
    v2 = await store.create_key(key("a" * 64, budgets={"day": {"limit": 1.0}}), NOW)
    assert 0 < v1 < v2 == await store.version()
    await store.touch_keys({"a" * 64: NOW + 5})
    assert await store.version() == v2  # last use is not a change to re-apply
    other = opener()
    try:
        snap = await other.snapshot()
    finally:
        await other.close()
    assert snap.version == v2
    assert snap.overrides == [Override("acme", "day", day, None, NOW)]
    (k,) = snap.keys
    assert (k.tenant, k.label, k.budgets, k.last_used_at) == (
        "acme",
        "ci",
        {"day": {"limit": 1.0}},
        NOW + 5,
    )


async def test_labels_are_unique_among_live_keys(store: AdminStore) -> None:
    await store.create_key(key("a" * 64), NOW)
    with pytest.raises(DuplicateLabel):
        await store.create_key(key("b" * 64), NOW)
    await store.create_key(key("c" * 64, tenant="other"), NOW)  # another tenant's label
    await store.create_key(key("d" * 64, label="old", expires_at=NOW - 1), NOW - 10)
    await store.create_key(key("e" * 64, label="old"), NOW)  # the holder expired
    assert len((await store.snapshot()).keys) == 4


async def test_revocation_keeps_the_earliest_time_and_names_missing_keys(store: AdminStore) -> None:
    await store.create_key(key("a" * 64), NOW)
    assert (await store.revoke_key("acme", "t2-aaaaaa", NOW + 100)).revoked_at == NOW + 100
    assert (await store.revoke_key("acme", "t2-aaaaaa", NOW)).revoked_at == NOW
    assert (await store.revoke_key("acme", "t2-aaaaaa", NOW + 500)).revoked_at == NOW
    with pytest.raises(KeyNotFound):
        await store.revoke_key("other", "t2-aaaaaa", NOW)  # not that tenant's key
    with pytest.raises(KeyNotFound):
        await store.revoke_key("acme", "t2-nope", NOW)


async def test_rotation_is_one_step(store: AdminStore) -> None:
    await store.create_key(key("a" * 64), NOW)
    await store.create_key(key("b" * 64, label="other"), NOW)
    # a clash with another live key's label: nothing happens, the old key stays unrevoked
    with pytest.raises(DuplicateLabel):
        await store.create_key(key("c" * 64, label="other"), NOW, revoke=("t2-aaaaaa", NOW + 60))
    snap = await store.snapshot()
    assert {k.sha256: k.revoked_at for k in snap.keys} == {"a" * 64: None, "b" * 64: None}
    # the same label as the key being rotated out is fine
    await store.create_key(key("d" * 64), NOW, revoke=("t2-aaaaaa", NOW + 60))
    by_sha = {k.sha256: k for k in (await store.snapshot()).keys}
    assert by_sha["a" * 64].revoked_at == NOW + 60 and by_sha["d" * 64].revoked_at is None
    assert by_sha["a" * 64].status(NOW + 59) == "active"
    assert by_sha["a" * 64].status(NOW + 60) == "revoked"
    with pytest.raises(KeyNotFound):
        await store.create_key(key("e" * 64, label="x"), NOW, revoke=("t2-zzzzzz", NOW))


async def test_a_revoked_or_expired_key_is_not_rotated(store: AdminStore) -> None:
    """The check is the store's, in the rotation's own step: a key revoked or expired by the
    time the step runs issues nothing, whatever a replica's snapshot said."""
    await store.create_key(key("a" * 64, label="gone"), NOW)
    await store.revoke_key("acme", "t2-aaaaaa", NOW + 5)
    await store.create_key(key("b" * 64, label="short", expires_at=NOW + 10), NOW)
    await store.create_key(key("c" * 64, label="grace"), NOW)
    await store.revoke_key("acme", "t2-cccccc", NOW + 60)  # still in its grace time
    before = await store.snapshot()
    dead = (("t2-aaaaaa", NOW + 5, "revoked"), ("t2-bbbbbb", NOW + 10, "expired"))
    for prefix, at, status in dead:  # at the very moment each stopped being live
        with pytest.raises(KeyNotLive) as refused:
            await store.create_key(key("d" * 64, label="new"), at, revoke=(prefix, at + 60))
        assert (refused.value.prefix, refused.value.status) == (prefix, status)
    after = await store.snapshot()
    assert after.version == before.version and after.keys == before.keys  # nothing issued
    # a moment earlier both were live, and a key in its grace time is live still: rotated
    await store.create_key(key("d" * 64, label="new"), NOW + 9, revoke=("t2-bbbbbb", NOW + 9))
    await store.create_key(key("e" * 64, label="grace"), NOW + 59, revoke=("t2-cccccc", NOW + 70))
    by_sha = {k.sha256: k for k in (await store.snapshot()).keys}
    assert by_sha["b" * 64].revoked_at == NOW + 9 and by_sha["c" * 64].revoked_at == NOW + 60
    assert by_sha["d" * 64].live(NOW + 59) and by_sha["e" * 64].live(NOW + 59)


async def test_a_key_that_expired_before_its_revocation_reads_expired(store: AdminStore) -> None:
    """A revocation that reaches a key already expired (its tenant deleted, its id reused)
    did not end it: the key reads "expired", in the snapshot and in a refused rotation alike
    (the Redis script says what StoredKey.status says)."""
    await store.create_key(key("a" * 64, label="short", expires_at=NOW + 5), NOW)
    await store.create_key(key("b" * 64, label="plain"), NOW)
    await store.revoke_key("acme", "t2-aaaaaa", NOW + 10)
    await store.revoke_key("acme", "t2-bbbbbb", NOW + 10)
    statuses = {k.label: k.status(NOW + 20) for k in (await store.snapshot()).keys}
    assert statuses == {"short": "expired", "plain": "revoked"}
    with pytest.raises(KeyNotLive) as refused:
        await store.create_key(key("c" * 64, label="new"), NOW + 20, revoke=("t2-aaaaaa", NOW))
    assert refused.value.status == "expired"


async def test_a_keys_rate_limits_are_stored_changed_and_cleared(
    store: AdminStore, opener: Callable[[], AdminStore]
) -> None:
    v1 = await store.create_key(key("a" * 64, rate_limits={"rpm": 5}), NOW)
    assert (await store.snapshot()).keys[0].rate_limits == {"rpm": 5}
    changed = await store.set_key_rate_limits("acme", "t2-aaaaaa", {"rpm": 7, "tpm": 900})
    assert changed.rate_limits == {"rpm": 7, "tpm": 900}
    assert await store.version() > v1  # every replica re-applies it
    with pytest.raises(KeyNotFound):
        await store.set_key_rate_limits("other", "t2-aaaaaa", {"rpm": 1})  # not that tenant's
    other = opener()
    try:
        assert (await other.snapshot()).keys[0].rate_limits == {"rpm": 7, "tpm": 900}
        cleared = await other.set_key_rate_limits("acme", "t2-aaaaaa", None)
    finally:
        await other.close()
    assert cleared.rate_limits is None
    assert (await store.snapshot()).keys[0].rate_limits is None


def team(tenant_id: str, at: float = NOW, **config: object) -> StoredTenant:
    return StoredTenant(tenant_id, {"models": ["m"], **config}, at)


async def test_a_tenant_is_created_and_deleted_in_one_step_each(
    store: AdminStore, opener: Callable[[], AdminStore]
) -> None:
    """Creating and deleting bump the version (every replica reloads) and survive a reopen; a
    deleted tenant stays as a tombstone, its overrides gone and its keys revoked from then on."""
    v0 = await store.version()
    v1 = await store.create_tenant(team("newco", budgets={"day": {"limit": 2.0}}), limit=10)
    assert v1 > v0
    with pytest.raises(TenantExists):
        await store.create_tenant(team("newco"), limit=10)
    await store.put_overrides([Override("newco", "day", {"limit": 9.0}, None, NOW)])
    await store.create_key(key("a" * 64, tenant="newco"), NOW)
    await store.create_key(key("b" * 64, tenant="newco", label="old"), NOW)
    await store.revoke_key("newco", "t2-bbbbbb", NOW + 5)  # an earlier revocation stands
    await store.create_key(key("c" * 64, tenant="acme"), NOW)  # another tenant's key
    other = opener()
    try:
        (made,) = (await other.snapshot()).live_tenants()
    finally:
        await other.close()
    assert made == team("newco", budgets={"day": {"limit": 2.0}})
    before = await store.version()
    after = await store.delete_tenant("newco", NOW + 60)
    assert after > before
    snap = await store.snapshot()
    assert snap.version == after and snap.live_tenants() == []
    (tomb,) = snap.tenants
    assert (tomb.id, tomb.deleted_at, tomb.config) == ("newco", NOW + 60, made.config)
    assert snap.overrides == []
    revoked = {k.sha256: k.revoked_at for k in snap.keys}
    assert revoked == {"a" * 64: NOW + 60, "b" * 64: NOW + 5, "c" * 64: None}
    with pytest.raises(TenantNotFound):
        await store.delete_tenant("newco", NOW + 61)  # already deleted
    with pytest.raises(TenantNotFound):
        await store.delete_tenant("nobody", NOW)
    assert (await store.snapshot()).version == after  # refusals change nothing


async def test_a_new_tenant_inherits_no_override_or_live_key_of_its_id(store: AdminStore) -> None:
    """An id used before (a tenant deleted, or one the file had) may be taken again: the new
    tenant replaces the tombstone and starts with no override and no live key of the old one."""
    await store.create_tenant(team("reuse", at=NOW), limit=10)
    await store.create_key(key("a" * 64, tenant="reuse"), NOW)
    await store.delete_tenant("reuse", NOW + 10)
    await store.put_overrides([Override("reuse", "rate_limits.rpm", 5, None, NOW + 20)])
    await store.create_key(key("b" * 64, tenant="reuse"), NOW + 20)  # made for a file tenant
    await store.create_tenant(team("reuse", at=NOW + 30, models=["*"]), limit=10)
    snap = await store.snapshot()
    assert snap.tenants == [team("reuse", at=NOW + 30, models=["*"])]
    assert snap.overrides == []
    assert {k.sha256: k.revoked_at for k in snap.keys} == {"a" * 64: NOW + 10, "b" * 64: NOW + 30}


async def test_the_tenant_limit_counts_live_tenants_only(store: AdminStore) -> None:
    await store.create_tenant(team("one"), limit=2)
    await store.create_tenant(team("two"), limit=2)
    version = await store.version()
    with pytest.raises(TooManyTenants):
        await store.create_tenant(team("three"), limit=2)
    assert await store.version() == version
    await store.delete_tenant("one", NOW + 1)
    await store.create_tenant(team("three"), limit=2)  # a tombstone does not count
    assert sorted(t.id for t in (await store.snapshot()).live_tenants()) == ["three", "two"]
