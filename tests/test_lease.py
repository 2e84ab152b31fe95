"""One writer per day: the lease of a date partition, on a local folder and on S3 (moto)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime, timedelta

import pytest

from fruits_pipeline import lease, validation
from fruits_pipeline.lake import Lake
from fruits_pipeline.lake_io import LocalLakeStorage

D = date(2026, 5, 4)
T0 = datetime(2026, 5, 5, 2, 0, tzinfo=UTC)
GRACE_S, TTL_S = 600, 3600


def take(lake, storage, token, *, alive=lambda token, partition: True, now=T0, run_id=None):
    run = lease.RunIdentity("fruits_features", run_id or f"manual__{token}", token)
    return lease.acquire(storage, lake, D, run, lease.LeaseTerms(alive, GRACE_S, TTL_S), now)


A = "20260505T020000Z-aaaaaaaa"
B = "20260505T020500Z-bbbbbbbb"
C = "20260505T021000Z-cccccccc"


def test_exclusive_create_refuses_an_existing_file(lake_and_storage):
    lake, storage = lake_and_storage
    uri = f"{lake.lease(D)}/x.json"
    assert storage.create_exclusive(uri, b"first") is True
    assert storage.create_exclusive(uri, b"second") is False
    assert storage.read_bytes(uri) == b"first"


def test_a_held_day_refuses_a_second_run_naming_the_holder(lake_and_storage):
    lake, storage = lake_and_storage
    first = take(lake, storage, A, run_id="scheduled__2026-05-05T02:00:00+00:00")
    assert first.generation == 1
    with pytest.raises(lease.LeaseHeld) as refused:
        take(lake, storage, B, now=T0 + timedelta(seconds=5))
    message = str(refused.value)
    assert "dt=2026-05-04" in message
    assert "scheduled__2026-05-05T02:00:00+00:00" in message and A in message
    assert lease.check_held(storage, lake, D, A) == first


def test_a_released_lease_is_taken_by_the_next_run(lake_and_storage):
    lake, storage = lake_and_storage
    take(lake, storage, A)
    assert lease.release(storage, lake, D, B) is False  # not B's to release
    assert lease.release(storage, lake, D, A) is True
    second = take(lake, storage, B, now=T0 + timedelta(seconds=1))
    assert second.generation == 2
    # Only the previous record stays beside the new one.
    assert lease.release(storage, lake, D, B) is True
    take(lake, storage, C, now=T0 + timedelta(seconds=2))
    assert storage.list_files(lake.lease(D)) == [
        "0000000002.json",
        "0000000002.released",
        "0000000003.json",
    ]
    # A released lease cannot be released again by its old holder.
    assert lease.release(storage, lake, D, B) is False
    with pytest.raises(lease.LeaseLost, match=C):
        lease.check_held(storage, lake, D, A)


def test_a_crashed_holder_is_taken_over_only_once_known_dead_or_expired(lake_and_storage):
    lake, storage = lake_and_storage
    take(lake, storage, A)
    dead = lambda token, partition: False  # noqa: E731
    # Within the grace period the holder may still be creating its cluster.
    with pytest.raises(lease.LeaseHeld):
        take(lake, storage, B, alive=dead, now=T0 + timedelta(seconds=GRACE_S - 1))
    # Its cluster alive: held until it expires, whatever the time.
    with pytest.raises(lease.LeaseHeld):
        take(lake, storage, B, now=T0 + timedelta(seconds=TTL_S - 1))
    taken = take(lake, storage, B, alive=dead, now=T0 + timedelta(seconds=GRACE_S))
    assert (taken.generation, taken.token) == (2, B)
    expired = take(lake, storage, C, now=T0 + timedelta(seconds=GRACE_S + TTL_S))
    assert (expired.generation, expired.token) == (3, C)
    # The runs that lost it cannot publish.
    for token in (A, B):
        with pytest.raises(lease.LeaseLost):
            lease.check_held(storage, lake, D, token)


def test_of_runs_racing_for_a_free_lease_exactly_one_wins(lake_and_storage):
    lake, storage = lake_and_storage
    take(lake, storage, A)
    lease.release(storage, lake, D, A)
    tokens = [f"20260505T0300{i:02d}Z-{i:08x}" for i in range(6)]
    start = threading.Barrier(len(tokens))
    won, refused = [], []

    def contend(token):
        start.wait()
        try:
            won.append(take(lake, storage, token, now=T0 + timedelta(seconds=10)))
        except lease.LeaseHeld as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=contend, args=(token,)) for token in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1, (won, refused)
    assert len(refused) == len(tokens) - 1
    assert all(won[0].token in message for message in refused)
    assert lease.check_held(storage, lake, D, won[0].token).generation == 2


def test_replace_folder_leaves_exactly_the_new_files(lake_and_storage):
    lake, storage = lake_and_storage
    old, new = lake.features(D), lake.features(D, A)
    for name in ("part-old-1.parquet", "part-old-2.parquet", "_SUCCESS"):
        storage.write_bytes(f"{old}/{name}", b"old")
    for name in ("part-new-1.parquet", "_SUCCESS"):
        storage.write_bytes(f"{new}/{name}", b"new " + name.encode())
    storage.replace_folder(new, old)
    assert storage.list_files(old) == ["_SUCCESS", "part-new-1.parquet"]
    assert storage.read_bytes(f"{old}/part-new-1.parquet") == b"new part-new-1.parquet"
    assert storage.list_files(new) == []


def test_publish_moves_the_staged_outputs_into_place_and_names_them(lake_and_storage):
    lake, storage = lake_and_storage
    storage.write_bytes(f"{lake.reduced(D)}/part-old.parquet", b"old run")
    storage.write_bytes(lake.success_marker(D), b"{}")
    for staged, _ in lake.published_outputs(D, A):
        storage.write_bytes(f"{staged}/part-0.parquet", staged.encode())
    manifest = {"k": 3, "output": lake.reduced(D, A), "report": f"{lake.report(D, A)}/x.png"}
    storage.write_bytes(lake.manifest(D, A), json.dumps(manifest).encode())
    summary = validation.PartitionSummary(D.isoformat(), 4, 4, 0, 4, "basis-x", 3, 0.9, 0.0)
    marker = validation.publish_partition(storage, lake, summary, run=A)
    assert marker == lake.success_marker(D)
    assert json.loads(storage.read_bytes(marker))["reduced"] == 4
    for staged, published in lake.published_outputs(D, A):
        assert "part-0.parquet" in storage.list_files(published)
        assert storage.read_bytes(f"{published}/part-0.parquet") == staged.encode()
    assert "part-old.parquet" not in storage.list_files(lake.reduced(D))
    published_manifest = json.loads(storage.read_bytes(lake.manifest(D)))
    assert published_manifest["output"] == lake.reduced(D)
    assert published_manifest["report"] == f"{lake.report(D)}/x.png"
    assert storage.list_files(lake.staging(D)) == []


def test_run_tokens_are_unique_path_segments():
    tokens = {lease.new_run_token() for _ in range(1000)}
    assert len(tokens) == 1000
    lake = Lake("/lake")
    for token in list(tokens)[:5]:
        assert lake.staging(D, token) == f"/lake/staging/dt=2026-05-04/{token}"
    for bad in ("../x", "", "a/b", "20260505T020000Z-AAAAAAAA"):
        with pytest.raises(ValueError, match="not a run token"):
            lake.staging(D, bad)


def test_a_local_rewrite_drops_the_checksum_hadoop_kept_of_the_old_bytes(tmp_path):
    # Spark wrote manifest.json and its .crc; publish rewrites the manifest: without the stale
    # checksum a later Spark read (a refit's reprojection) reads it instead of failing.
    manifest, checksum = tmp_path / "manifest.json", tmp_path / ".manifest.json.crc"
    manifest.write_text("{}")
    checksum.write_bytes(b"crc of {}")
    LocalLakeStorage().write_bytes(str(manifest), b'{"basis": "b"}')
    assert manifest.read_bytes() == b'{"basis": "b"}' and not checksum.exists()
    checksum.write_bytes(b"crc")
    LocalLakeStorage().delete(str(manifest))
    assert not manifest.exists() and not checksum.exists()
