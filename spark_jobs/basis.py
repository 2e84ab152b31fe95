"""A PCA basis as a lake artifact: its files, its id, its manifest and which weights it assumes.

Standard library only at import: the Airflow side (choosing a run's basis) and the PCA jobs
both use it; the jobs read and write a basis here, through `storage` (imported when called).

    models/pca/<basis id>/pca_model.json          mean, scale, components, eigenvalues (pca_math)
    models/pca/<basis id>/explained_variance.png  its cumulative explained variance (when fitted
                                                  on its own, by `pca --fit-basis` without
                                                  --output)
    models/pca/<basis id>/manifest.json           what it was fit on (days, rows), k, variance
                                                  asked and reached, the weights it assumes, when

A basis is written once and never changed: a fit refuses a folder that already holds a model.
The manifest is written last: a basis is complete once it exists.
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime

MODEL_FILE = "pca_model.json"
CURVE_FILE = "explained_variance.png"
MANIFEST_FILE = "manifest.json"
WAIT_POLL_S = 5.0
BASIS_ID = re.compile(r"basis-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}")


def new_basis_id(now: datetime | None = None) -> str:
    """Sortable by creation time, safe in paths."""
    now = now or datetime.now(UTC)
    return f"basis-{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"


def checked_basis_id(basis_id: str) -> str:
    if not isinstance(basis_id, str) or not BASIS_ID.fullmatch(basis_id):
        raise ValueError(f"not a basis id: {basis_id!r}")
    return basis_id


def basis_id_of(uri: str) -> str:
    """The id of the basis whose folder is `uri` (its last path segment)."""
    return checked_basis_id(uri.rstrip("/").rsplit("/", 1)[-1])


def model_uri(basis_uri: str) -> str:
    return f"{basis_uri.rstrip('/')}/{MODEL_FILE}"


def manifest_uri(basis_uri: str) -> str:
    return f"{basis_uri.rstrip('/')}/{MANIFEST_FILE}"


def curve_uri(basis_uri: str) -> str:
    return f"{basis_uri.rstrip('/')}/{CURVE_FILE}"


def refuse_existing(spark, uri: str) -> None:
    """A clear error when `uri` already holds a basis (complete or being written)."""
    from spark_jobs import storage

    if storage.exists(spark, model_uri(uri)):
        raise FileExistsError(
            f"basis {basis_id_of(uri)} already exists: a basis is never rewritten"
        )


def write(spark, uri: str, model: dict, manifest: dict, curve_png: bytes | None = None) -> None:
    """A new basis: the model, the curve (if any), then the manifest that completes it."""
    from spark_jobs import storage

    refuse_existing(spark, uri)
    storage.write_json(spark, model_uri(uri), model)
    if curve_png is not None:
        storage.write_bytes(spark, curve_uri(uri), curve_png)
    storage.write_json(spark, manifest_uri(uri), manifest)


def read(spark, uri: str, wait_s: float = 0.0) -> tuple[dict, dict]:
    """(model, manifest) of the basis at `uri`, waiting up to `wait_s` for the run still
    fitting it."""
    from spark_jobs import storage

    deadline = time.monotonic() + wait_s
    while not storage.exists(spark, manifest_uri(uri)):
        left = deadline - time.monotonic()
        if left <= 0:
            raise FileNotFoundError(
                f"basis {basis_id_of(uri)} is not in the lake ({uri}), "
                f"after waiting {wait_s:.0f} s for the run fitting it"
            )
        time.sleep(min(WAIT_POLL_S, left))  # up to wait_s, not up to a poll beyond it
    return storage.read_json(spark, model_uri(uri)), storage.read_json(spark, manifest_uri(uri))


def same_weights(a: dict | None, b: dict | None) -> bool:
    """Whether two weights records (`{"source", "sha256"}`) are the same weights: by content
    when either has a digest, else (random weights) by name."""
    if not a or not b:
        return False
    if a.get("sha256") or b.get("sha256"):
        return a.get("sha256") == b.get("sha256")
    return a.get("source") == b.get("source")


def describe_weights(record: dict | None) -> str:
    if not record:
        return "unknown weights"
    digest = record.get("sha256")
    return f"{record.get('source')}" + (f" (sha256 {digest[:12]}…)" if digest else "")


class WeightsMismatch(ValueError):
    """Features and basis were made with different weights: their spaces are unrelated."""


def check_weights(features: dict | None, basis: dict | None, basis_id: str) -> None:
    if features is None and basis is None:
        return  # neither recorded (features written without `_featurize.json`): no mismatch
    if not same_weights(features, basis):
        raise WeightsMismatch(
            f"these features were made with {describe_weights(features)} but basis {basis_id} "
            f"assumes {describe_weights(basis)}: a basis only reduces features of its own "
            "weights. Use those weights, or another lake for other weights"
        )
