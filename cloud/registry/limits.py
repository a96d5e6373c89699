"""Every size, count and time limit of the registry, defined once (the servicers import them from here).

Sizes in bytes, times in seconds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidArgument

DEFAULT_CHUNK_SIZE = 1 << 20  # Download chunk when the client asks for none (benchmarks/transfer.py)
MIN_CHUNK_SIZE = 16 << 10  # smaller requests are raised to this: a 1-byte chunk would cost a message per byte
MAX_CHUNK_SIZE = 3 << 20  # stays under gRPC's default 4 MiB receive limit of every client
HASH_BLOCK = 1 << 20  # bytes read at a time when hashing
BUSY_TIMEOUT_S = 30.0  # SQLite busy timeout
DEFAULT_QUEUE_SIZE = 256  # events per subscription
EVENT_POLL_S = 0.25  # seconds between looks for events committed by other processes
TMP_MAX_AGE_S = 3600.0  # gc removes ingest temp files of live processes older than this
MAX_STAGES = 64  # stage rows per metric report
MAX_METRICS = 1024  # metrics per report
MAX_CONFIG_BYTES = 64 << 10  # a job's config_json (SubmitJob)
MAX_CONFIG_DEPTH = 32  # nesting levels of a job's config_json
MAX_DATASET_CHARS = 1024  # a job's dataset name or path

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ALIAS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Retention:
    """How much of the tables that clients can grow is kept (``Registry.prune``).

    Counts are rows; ages are seconds. Active jobs (QUEUED, RUNNING) are never pruned. The events table
    only feeds live delivery, so it is kept short.
    """

    jobs_keep: int = 1000
    jobs_max_age_s: float = 30 * 86400.0
    reports_keep: int = 100_000
    reports_max_age_s: float = 90 * 86400.0
    events_keep: int = 2000
    events_max_age_s: float = 86400.0

    def __post_init__(self) -> None:
        for k in ("jobs_keep", "reports_keep", "events_keep"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidArgument(k, "must be an int >= 1, got {!r}".format(v))
        for k in ("jobs_max_age_s", "reports_max_age_s", "events_max_age_s"):
            if not getattr(self, k) > 0:
                raise InvalidArgument(k, "must be > 0 seconds, got {!r}".format(getattr(self, k)))
