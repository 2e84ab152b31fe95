"""Layout of the data lake: the one place that builds lake paths.

A lake root is an S3 URI (``s3://bucket/prefix``; ``s3a://`` for Spark outside EMR) or an
absolute local folder. Every dataset is partitioned by day as ``<dataset>/dt=YYYY-MM-DD``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime

from spark_jobs.basis import checked_basis_id

S3_SCHEMES = ("s3://", "s3a://")
# AWS bucket naming rules: 3-63 characters, lower-case letters, digits, dots and hyphens.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_DIGEST = re.compile(r"[0-9a-f]+")
# A run's token: a path segment of its own under staging/ (made by `lease.new_run_token`).
_RUN_TOKEN = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}")
# What downstream reads, all days as one table: `table(name)`.
PUBLISHED_TABLES = ("features", "errors", "reduced")
SUCCESS = "_SUCCESS"  # in reports/dt=D/: the day is published


def _split(location: str) -> tuple[str, tuple[str, ...]]:
    """Return (store, path segments) of a location; store is ``s3://<bucket>`` or ``/``.

    ``s3a://`` is the same store as ``s3://``: both name the same objects.
    """
    if not location:
        raise ValueError("location is empty")
    scheme = next((s for s in S3_SCHEMES if location.startswith(s)), None)
    if scheme is not None:
        bucket, _, key = location[len(scheme) :].partition("/")
        if not _BUCKET_NAME.fullmatch(bucket):
            raise ValueError(f"{location!r} does not name a valid S3 bucket (got {bucket!r})")
        store, path = f"s3://{bucket}", key
    elif location.startswith("/"):
        store, path = "/", location[1:]
    else:
        raise ValueError(
            f"{location!r} is neither an absolute local path nor an s3:// or s3a:// URI"
        )
    segments = tuple(path.rstrip("/").split("/")) if path.rstrip("/") else ()
    for segment in segments:
        if segment in ("", ".", ".."):
            raise ValueError(f"{location!r} has an empty, '.' or '..' path segment")
    return store, segments


@dataclass(frozen=True)
class Lake:
    """A lake root and the paths of every dataset in it; trailing slashes are dropped."""

    root: str

    def __post_init__(self) -> None:
        store, segments = _split(self.root)
        if store == "/" and not segments:
            raise ValueError("the lake root cannot be the filesystem root '/'")
        object.__setattr__(self, "root", self.root.rstrip("/"))

    @property
    def is_s3(self) -> bool:
        return self.root.startswith(S3_SCHEMES)

    @property
    def bucket(self) -> str:
        return self._s3_store()[len("s3://") :]

    @property
    def key_prefix(self) -> str:
        """Key of the root inside the bucket, without a trailing slash ('' at bucket root)."""
        self._s3_store()
        return "/".join(_split(self.root)[1])

    def is_within(self, uri: str) -> bool:
        """True when ``uri`` is this root or below it; malformed URIs are never within."""
        try:
            store, segments = _split(uri)
        except ValueError:
            return False
        root_store, root_segments = _split(self.root)
        return store == root_store and segments[: len(root_segments)] == root_segments

    def s3_key(self, uri: str) -> str:
        """Object key of a URI inside this S3 lake, as boto3 wants it."""
        self._s3_store()
        if not self.is_within(uri):
            raise ValueError(f"{uri!r} is outside the lake {self.root!r}")
        return "/".join(_split(uri)[1])

    def raw(self, dt: date) -> str:
        return self._partition("raw", dt)

    def table(self, dataset: str) -> str:
        """Every published day of a dataset as one table (hive partitions ``dt=YYYY-MM-DD``)."""
        if dataset not in PUBLISHED_TABLES:
            raise ValueError(f"not a published table: {dataset!r} (one of {PUBLISHED_TABLES})")
        return self.days_of(dataset)

    # The outputs of a day. With `run`, the run's private staging copy: its steps write there,
    # and only the holder of the day's lease moves it into place (see `published_outputs`).
    def features(self, dt: date, run: str | None = None) -> str:
        return self._partition("features", dt, run)

    def errors(self, dt: date, run: str | None = None) -> str:
        return self._partition("errors", dt, run)

    def reduced(self, dt: date, run: str | None = None) -> str:
        return self._partition("reduced", dt, run)

    def report(self, dt: date, run: str | None = None) -> str:
        return self._partition("reports", dt, run)

    def manifest(self, dt: date, run: str | None = None) -> str:
        return f"{self.report(dt, run)}/manifest.json"

    def published_outputs(self, dt: date, run: str) -> list[tuple[str, str]]:
        """(staged folder, published folder) of every output a run publishes, in order."""
        return [
            (dataset(dt, run), dataset(dt))
            for dataset in (self.features, self.errors, self.reduced, self.report)
        ]

    def staging(self, dt: date, run: str | None = None) -> str:
        """Where the runs of a day stage their outputs; with `run`, that run's folder."""
        folder = self._partition("staging", dt)
        return f"{folder}/{self._checked_run(run)}" if run is not None else folder

    def basis(self, basis_id: str) -> str:
        """Folder of one PCA basis (model and manifest); written once, never changed."""
        return f"{self.root}/models/pca/{checked_basis_id(basis_id)}"

    def bases(self) -> str:
        return f"{self.root}/models/pca"

    def current_basis(self) -> str:
        """Folder of the records naming the current basis, one generation each."""
        return f"{self.root}/models/current-basis"

    def lease(self, dt: date) -> str:
        """Folder of the day's lease records: one writer per day (see lease.py)."""
        return self._partition("leases", dt)

    def refit_lease(self) -> str:
        """Folder of the lake-wide lease a refit of the PCA basis holds (see lease.py)."""
        return f"{self.root}/leases/refit"

    def refit_staging(self, run: str) -> str:
        """A refit's private folder: its reprojected days (`reduced/dt=D/`, `reports/dt=D/`)
        until it switches them in, and the days it replaced (`previous/`) until it succeeded."""
        return f"{self.root}/staging/refits/{self._checked_run(run)}"

    def days_of(self, dataset: str) -> str:
        """The folder holding a dataset's `dt=D/` partitions (to list the days it has)."""
        if dataset not in (*PUBLISHED_TABLES, "reports", "leases"):
            raise ValueError(f"not a dataset partitioned by day: {dataset!r}")
        return f"{self.root}/{dataset}"

    def success_marker(self, dt: date) -> str:
        return f"{self.report(dt)}/{SUCCESS}"

    def artifacts(self, digest: str) -> str:
        """Folder of the staged code whose content digest is ``digest``."""
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"artifact digest must be lower-case hex, got {digest!r}")
        return f"{self.root}/artifacts/{digest}"

    def model_cache(self) -> str:
        """TFLite conversions of the model, keyed by weights digest and TensorFlow version."""
        return f"{self.root}/models/tflite"

    def emr_logs(self) -> str:
        """EMR LogUri: a prefix, hence the trailing slash."""
        return f"{self.root}/logs/emr/"

    def _partition(self, dataset: str, dt: date, run: str | None = None) -> str:
        # A datetime is a date too, but its isoformat() would put a time in the path.
        if not isinstance(dt, date) or isinstance(dt, datetime):
            raise TypeError(f"partition must be a datetime.date, got {dt!r}")
        if run is not None:
            return f"{self.staging(dt, run)}/{dataset}"
        return f"{self.root}/{dataset}/dt={dt.isoformat()}"  # table(dataset)'s partition

    @staticmethod
    def _checked_run(run: str) -> str:
        if not isinstance(run, str) or not _RUN_TOKEN.fullmatch(run):
            raise ValueError(f"not a run token: {run!r}")
        return run

    def _s3_store(self) -> str:
        if not self.is_s3:
            raise ValueError(f"the lake {self.root!r} is a local folder, not S3")
        return _split(self.root)[0]
