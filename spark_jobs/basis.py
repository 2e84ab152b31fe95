"""A PCA basis as a lake artifact: its files, its id, its manifest and which weights it assumes.

Standard library only: the Airflow side (choosing a run's basis) and the PCA job both use it.

    models/pca/<basis id>/pca_model.json   mean, scale, components, eigenvalues (pca_math)
    models/pca/<basis id>/manifest.json    what it was fit on (days, rows), k, variance asked
                                           and reached, the weights it assumes, when

A basis is written once and never changed: a fit refuses a folder that already holds a model.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

MODEL_FILE = "pca_model.json"
MANIFEST_FILE = "manifest.json"
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


def check_weights(features: dict | None, basis: dict, basis_id: str) -> None:
    if not same_weights(features, basis):
        raise WeightsMismatch(
            f"these features were made with {describe_weights(features)} but basis {basis_id} "
            f"assumes {describe_weights(basis)}: a basis only reduces features of its own "
            "weights. Use those weights, or another lake for other weights"
        )
