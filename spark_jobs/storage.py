"""Small files beside the Parquet outputs (manifests, the PCA model, report images, weights).

Written through the Hadoop FileSystem of the running Spark session, so the same call reaches a
local folder, `s3://` on EMR (EMRFS, with its encryption settings) and `s3a://` (MinIO), with the
credentials Spark already has: no second storage client to configure.
"""

from __future__ import annotations

import json
import os
import uuid

from pyspark.sql import SparkSession


def _filesystem_path(spark: SparkSession, uri: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def qualified(spark: SparkSession, uri: str) -> str:
    """`uri` as Spark will report it: with a scheme, absolute (`raw/x` -> `file:/repo/raw/x`)."""
    fs, path = _filesystem_path(spark, uri)
    return fs.makeQualified(path).toString()


def exists(spark: SparkSession, uri: str) -> bool:
    fs, path = _filesystem_path(spark, uri)
    return bool(fs.exists(path))


def write_bytes(spark: SparkSession, uri: str, data: bytes) -> None:
    """Write a whole file. Readers never see it half written: an S3 PUT is atomic, elsewhere
    the bytes go to a hidden file renamed into place."""
    fs, path = _filesystem_path(spark, uri)
    if fs.getScheme() in ("s3", "s3a", "s3n"):
        _write(fs, path, data)
        return
    jvm = spark.sparkContext._jvm
    partial = jvm.org.apache.hadoop.fs.Path(
        path.getParent(), f".{path.getName()}.{uuid.uuid4().hex}.partial"
    )
    _write(fs, partial, data)
    if not fs.rename(partial, path):  # Hadoop does not rename over an existing file
        fs.delete(path, False)
        if not fs.rename(partial, path):
            fs.delete(partial, False)
            raise OSError(f"cannot write {uri}")


def _write(fs, path, data: bytes) -> None:
    stream = fs.create(path, True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()


def read_bytes(spark: SparkSession, uri: str) -> bytes:
    fs, path = _filesystem_path(spark, uri)
    stream = fs.open(path)
    try:
        return bytes(spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def write_json(spark: SparkSession, uri: str, document: dict) -> None:
    write_bytes(spark, uri, json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8"))


def read_json(spark: SparkSession, uri: str) -> dict:
    return json.loads(read_bytes(spark, uri).decode("utf-8"))


def copy_to_local(spark: SparkSession, uri: str, local_path: str) -> None:
    fs, path = _filesystem_path(spark, uri)
    if not fs.exists(path):
        raise FileNotFoundError(uri)
    jvm = spark.sparkContext._jvm
    target = jvm.org.apache.hadoop.fs.Path(os.path.abspath(local_path))
    fs.copyToLocalFile(False, path, target, True)


def delete(spark: SparkSession, uri: str) -> None:
    fs, path = _filesystem_path(spark, uri)
    fs.delete(path, True)
