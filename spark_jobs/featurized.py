"""Featurize outputs as the PCA jobs read them: their vectors checked, their weights."""

from __future__ import annotations

from spark_jobs import basis

FEATURES_SCHEMA = "path string, label string, features array<float>"


def vector_counts(features, *by: str) -> list:
    """Per value of the `by` columns (one row overall without): rows, shortest and longest
    vector, rows without one."""
    from pyspark.sql import functions as F

    return (
        features.groupBy(*by)
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.min(F.size("features")).alias("shortest"),
            F.max(F.size("features")).alias("longest"),
            F.sum(F.col("features").isNull().cast("int")).alias("missing"),
        )
        .collect()
    )


def checked_counts(counts, subject: str = "the input") -> tuple[int, int]:
    """(rows, d) from a `vector_counts` row (None: no rows); a clear error, naming `subject`,
    when vectors are missing, of different lengths, or fewer than 2."""
    rows = counts.rows if counts is not None else 0
    if rows < 2:
        raise ValueError(f"PCA needs at least 2 feature vectors; {subject} has {rows}")
    if counts.missing:
        raise ValueError(f"{counts.missing} rows of {subject} have no feature vector")
    if counts.shortest != counts.longest:
        raise ValueError(
            f"feature vectors of {subject} differ in length: "
            f"from {counts.shortest} to {counts.longest}"
        )
    return int(rows), int(counts.longest)


def check_features(features) -> tuple[int, int]:
    """(rows, d) of all the rows; a clear error when vectors are missing or of different
    lengths."""
    return checked_counts(vector_counts(features)[0])


def featurize_manifest(spark, uri: str) -> dict | None:
    """The `_featurize.json` beside a featurize output (weights, counts), None without one."""
    from spark_jobs import storage
    from spark_jobs.featurize import FEATURIZE_MANIFEST

    manifest = f"{uri.rstrip('/')}/{FEATURIZE_MANIFEST}"
    return storage.read_json(spark, manifest) if storage.exists(spark, manifest) else None


def input_weights(spark, inputs: list[str]) -> dict | None:
    """The weights every input was featurized with (their `_featurize.json`); they must agree."""
    records = []
    for uri in inputs:
        manifest = featurize_manifest(spark, uri)
        if manifest is not None:
            records.append((uri, manifest.get("weights")))
    if not records:
        return None
    (first_uri, first), *others = records
    for uri, record in others:
        # Both unknown is no mismatch, as in apply mode's check.
        if (first or record) and not basis.same_weights(first, record):
            raise basis.WeightsMismatch(
                f"the inputs were featurized with different weights: "
                f"{basis.describe_weights(first)} ({first_uri}) and "
                f"{basis.describe_weights(record)} ({uri})"
            )
    return first
