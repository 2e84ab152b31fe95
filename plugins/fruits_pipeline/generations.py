"""A sequence of small JSON records in one lake folder, each added by an atomic exclusive create.

`<folder>/<generation>.json`, generation 1, 2, 3...: the newest is the one that counts. Of two
writers adding the same generation, exactly one succeeds (S3: `If-None-Match: *`; locally: a
hard link), so the sequence serialises whoever adds to it without a lock server. The day's lease
(lease.py) and the current PCA basis (basis.py) are such sequences.
"""

from __future__ import annotations

import json
from typing import Any

from fruits_pipeline.lake_io import LakeStorage

RECORD = ".json"


class RecordLog:
    def __init__(self, storage: LakeStorage, folder: str):
        self.storage = storage
        self.folder = folder.rstrip("/")

    def path(self, generation: int, suffix: str = RECORD) -> str:
        return f"{self.folder}/{generation:010d}{suffix}"

    def generations(self) -> list[int]:
        return sorted(
            int(name[: -len(RECORD)])
            for name in self.storage.list_files(self.folder)
            if name.endswith(RECORD) and name[: -len(RECORD)].isdigit()
        )

    def read(self, generation: int) -> dict[str, Any]:
        return json.loads(self.storage.read_bytes(self.path(generation)))

    def latest(self) -> tuple[int, dict[str, Any]] | None:
        generations = self.generations()
        return (generations[-1], self.read(generations[-1])) if generations else None

    def add(self, generation: int, record: dict[str, Any]) -> bool:
        """Add `generation`; False when another writer added it first."""
        data = json.dumps(record, indent=2).encode()
        return self.storage.create_exclusive(self.path(generation), data)

    def mark(self, generation: int, suffix: str, data: bytes = b"") -> None:
        self.storage.write_bytes(self.path(generation, suffix), data)

    def marked(self, generation: int, suffix: str) -> bool:
        return self.storage.exists(self.path(generation, suffix))

    def prune(self, below: int, suffixes: tuple[str, ...] = ()) -> None:
        """Delete the records (and their marks) of generations below `below`.

        Keep the one before the newest: a writer listing the folder while the newest is being
        added may miss it, but then finds the previous one and loses the race for the newest;
        with no record at all it would start again from generation 1.
        """
        for generation in self.generations():
            if generation < below:
                for suffix in (RECORD, *suffixes):
                    self.storage.delete(self.path(generation, suffix))
