"""Validation of a processed partition before it is published, and the publication itself.

Reads only what the jobs wrote (Parquet footers for counts, the reduced vectors batch by batch),
with pyarrow: no Spark on the Airflow worker.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import date

import numpy as np

from fruits_pipeline.lake import Lake
from fruits_pipeline.lake_io import LakeStorage
from spark_jobs.inputs import classify_keys, is_hidden_name, list_inputs


class ValidationFailed(RuntimeError):
    """The outputs of a partition are not fit to publish; the message gives the numbers."""


@dataclass(frozen=True)
class PartitionSummary:
    partition: str
    images_found: int
    featurized: int
    errors: int
    reduced: int
    basis: str
    k: int
    explained_variance: float
    error_ratio: float


def count_images(storage: LakeStorage, lake: Lake, dt: date) -> int:
    """Uploads of the day that the jobs must account for: images plus the files recorded as
    errors (symbolic links, undecodable names...). The featurize job's own listing and
    classification (`spark_jobs.inputs`), so both sides count the same files by construction:
    a local lake is listed as the job lists it; S3 keys are classified as the job does."""
    raw = lake.raw(dt)
    if not lake.is_s3:
        try:
            return len(list_inputs(raw))
        except FileNotFoundError:
            return 0
    return len(classify_keys(raw, storage.list_files(raw)))


def parquet_parts(storage: LakeStorage, dataset: str) -> list[str]:
    """Data files of a Parquet folder written by Spark (markers and checksums left out)."""
    return [
        f"{dataset.rstrip('/')}/{name}"
        for name in storage.list_files(dataset)
        if not any(is_hidden_name(part) for part in name.split("/")) and name.endswith(".parquet")
    ]


def parquet_rows(storage: LakeStorage, dataset: str) -> int:
    import pyarrow.parquet as pq

    rows = 0
    for part in parquet_parts(storage, dataset):
        with storage.local_copy(part) as path:
            rows += pq.ParquetFile(path).metadata.num_rows
    return rows


def reduced_vectors_check(
    storage: LakeStorage, dataset: str, k: int, basis: str
) -> tuple[int, int, int, int]:
    """(rows, rows whose vector is not k long, rows with NaN or inf, rows not in `basis`),
    batch by batch."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rows = wrong_length = not_finite = other_basis = 0
    for part in parquet_parts(storage, dataset):
        with storage.local_copy(part) as path:
            parquet = pq.ParquetFile(path)
            if "basis" not in parquet.schema_arrow.names:
                other_basis += parquet.metadata.num_rows
            for batch in parquet.iter_batches(
                columns=[c for c in ("pca_features", "basis") if c in parquet.schema_arrow.names]
            ):
                vectors = batch.column("pca_features")
                rows += len(vectors)
                lengths = pc.fill_null(pc.list_value_length(vectors), -1)
                wrong_length += int(pc.sum(pc.not_equal(lengths, k)).as_py() or 0)
                values = vectors.flatten().to_numpy(zero_copy_only=False)
                rows_of_values = pc.list_parent_indices(vectors).to_numpy()
                not_finite += len(np.unique(rows_of_values[~np.isfinite(values)]))
                if "basis" in batch.schema.names:
                    same = pc.fill_null(pc.equal(batch.column("basis"), basis), False)
                    other_basis += len(vectors) - int(pc.sum(same).as_py() or 0)
    return rows, wrong_length, not_finite, other_basis


def validate_partition(
    storage: LakeStorage,
    lake: Lake,
    dt: date,
    *,
    images_found: int,
    max_error_ratio: float,
    run: str | None = None,
) -> PartitionSummary:
    """Check a partition's outputs (with `run`, that run's staged ones); raise ValidationFailed
    with every problem and its numbers."""
    manifest_uri = lake.manifest(dt, run)
    if not storage.exists(manifest_uri):
        raise ValidationFailed(f"no PCA manifest at {manifest_uri}: the PCA step wrote none")
    manifest = json.loads(storage.read_bytes(manifest_uri))
    if not manifest.get("basis"):
        raise ValidationFailed(f"the PCA manifest {manifest_uri} names no basis")
    k, basis = int(manifest["k"]), manifest["basis"]
    featurized = parquet_rows(storage, lake.features(dt, run))
    errors = parquet_rows(storage, lake.errors(dt, run))
    reduced, wrong_length, not_finite, other_basis = reduced_vectors_check(
        storage, lake.reduced(dt, run), k, basis
    )
    error_ratio = errors / images_found if images_found else math.inf
    problems = []
    if featurized + errors != images_found:
        problems.append(
            f"featurized ({featurized}) + errors ({errors}) = {featurized + errors} != "
            f"images found ({images_found}): {images_found - featurized - errors} images "
            "unaccounted for"
        )
    if reduced != featurized:
        problems.append(f"reduced rows ({reduced}) != featurized rows ({featurized})")
    if wrong_length:
        problems.append(f"{wrong_length} reduced vectors do not have k={k} dimensions")
    if not_finite:
        problems.append(f"{not_finite} reduced vectors contain NaN or inf")
    if other_basis:
        problems.append(f"{other_basis} reduced rows are not in basis {basis}")
    if error_ratio > max_error_ratio:
        problems.append(
            f"error ratio {errors}/{images_found} = {error_ratio:.2%} exceeds the maximum "
            f"{max_error_ratio:.2%}"
        )
    if problems:
        raise ValidationFailed(
            f"partition dt={dt.isoformat()} is not valid: " + "; ".join(problems)
        )
    return PartitionSummary(
        partition=dt.isoformat(),
        images_found=images_found,
        featurized=featurized,
        errors=errors,
        reduced=reduced,
        basis=basis,
        k=k,
        explained_variance=float(manifest["explained_variance"]),
        error_ratio=error_ratio,
    )


def publish_partition(
    storage: LakeStorage, lake: Lake, summary: PartitionSummary, *, run: str
) -> str:
    """Move the run's staged outputs into place, then write `_SUCCESS` last: readers take a
    partition as published only when it exists. The caller holds the day's lease."""
    dt = date.fromisoformat(summary.partition)
    marker = lake.success_marker(dt)
    moves = lake.published_outputs(dt, run)
    # The manifest names where the jobs wrote; once published, that is the published folders.
    manifest = json.loads(storage.read_bytes(lake.manifest(dt, run)))
    for key, value in manifest.items():
        for staged, published in moves:
            if isinstance(value, str) and (value == staged or value.startswith(staged + "/")):
                manifest[key] = published + value[len(staged) :]
    storage.write_bytes(lake.manifest(dt, run), json.dumps(manifest, indent=2).encode())
    storage.delete(marker)
    for staged, published in moves:
        storage.replace_folder(staged, published)
    storage.write_bytes(marker, json.dumps(asdict(summary), indent=2).encode())
    storage.delete_folder(lake.staging(dt, run))
    return marker
