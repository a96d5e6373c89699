"""What a client may hold of the cloud daemon, and the gate that enforces it.

Every resource a client can hold has a limit (``ServerLimits``, one ``cloud-server serve`` flag each).
Over a limit a call gets ``RESOURCE_EXHAUSTED`` at once, never a queue or a hang. Health checks and
reflection are never counted (they run on the event loop, outside every limit and executor), and the
token check (``shared.rpc.auth.TokenAuth``) runs before admission, so unauthenticated calls never take
capacity from authenticated ones.

All counters live on the daemon's one event-loop thread, so they need no lock.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import grpc

from shared.config import not_positive
from shared.errors import status_details

from .registry import MAX_CHUNK_SIZE, InvalidArgument

MiB = 1 << 20


@dataclass(frozen=True)
class ServerLimits:
    """Limits of one ``cloud-server serve`` (counts; seconds; bytes). Defaults fit 1,000 edges on 2 cores.

    ``max_rpcs``: unary cosmo calls in flight (ListModels, GetManifest, ReportMetrics, SubmitJob, ...).
    ``max_streams``: server streams open (Download, WatchModels, WatchJob), watchers included.
    ``max_watchers``: WatchModels + WatchJob streams open (each edge agent holds one or two).
    ``max_downloads``: Download streams open.
    ``stream_idle_s``: a stream whose reader has not taken the next message for this long is ended
    (DEADLINE_EXCEEDED): a stalled reader costs at most its flow-control window, and only this long.
    ``stream_max_s``: a stream's whole life. A watch then ends normally (the edge re-subscribes with
    ``send_current``); a Download ends with DEADLINE_EXCEEDED (the client resumes from its offset).
    ``keepalive_s`` / ``keepalive_timeout_s``: HTTP/2 pings on every connection; a peer that does not
    answer within the timeout (a dead edge behind a half-open connection) is disconnected and its
    streams freed.
    ``max_message_bytes``: largest request accepted (responses: a Download chunk is at most 3 MiB).
    ``executor_threads``: threads for blocking registry work (SQLite reads/writes, blob reads).
    """

    max_rpcs: int = 1024
    max_streams: int = 4096
    max_watchers: int = 3072
    max_downloads: int = 1024
    stream_idle_s: float = 60.0
    stream_max_s: float = 3600.0
    keepalive_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    max_message_bytes: int = 4 * MiB
    executor_threads: int = 4

    def __post_init__(self) -> None:
        bad = not_positive(self)
        if bad:
            raise InvalidArgument(bad, "must be a number > 0, got {!r}".format(getattr(self, bad)))

    def grpc_options(self) -> list[tuple[str, Any]]:
        """Channel arguments of the server: keepalive, message sizes, and no port sharing (SO_REUSEPORT
        would let a second daemon bind the same port and silently split requests between registries)."""
        return [
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_time_ms", int(self.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
            ("grpc.http2.ping_timeout_ms", int(self.keepalive_timeout_s * 1000)),  # grpcio >= 1.6x: the ack timer
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),  # edges may ping every 5 s
            # calls that arrive faster than the event loop picks them up wait in grpc core; past its
            # defaults (1,000 soft, 3,000 hard) core cancels them (clients see CANCELLED, e.g. when
            # 2,000 edges ask for a new manifest at once): let them wait, admission decides
            ("grpc.server.max_pending_requests", self.max_rpcs + self.max_streams),
            ("grpc.server.max_pending_requests_hard_limit", 2 * (self.max_rpcs + self.max_streams)),
            ("grpc.max_receive_message_length", int(self.max_message_bytes)),
            ("grpc.max_send_message_length", MAX_CHUNK_SIZE + MiB),
        ]


class Admission:
    """Counts of what is open, checked against ``ServerLimits`` (used only on the event-loop thread)."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.rpcs = self.streams = self.watchers = self.downloads = 0

    def _over(self, kind: str) -> str | None:
        lim = self.limits
        if kind == "rpc":
            return None if self.rpcs < lim.max_rpcs else "{} calls in flight (--max-rpcs {})".format(
                self.rpcs, lim.max_rpcs)
        if self.streams >= lim.max_streams:
            return "{} streams open (--max-streams {})".format(self.streams, lim.max_streams)
        if kind == "watch" and self.watchers >= lim.max_watchers:
            return "{} watchers open (--max-watchers {})".format(self.watchers, lim.max_watchers)
        if kind == "download" and self.downloads >= lim.max_downloads:
            return "{} downloads open (--max-downloads {})".format(self.downloads, lim.max_downloads)
        return None

    def _add(self, kind: str, n: int) -> None:
        if kind == "rpc":
            self.rpcs += n
            return
        self.streams += n
        if kind == "watch":
            self.watchers += n
        elif kind == "download":
            self.downloads += n

    async def enter(self, kind: str, context: grpc.aio.ServicerContext) -> None:
        why = self._over(kind)
        if why is not None:
            await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy: {}; retry later".format(why))
        self._add(kind, 1)

    def leave(self, kind: str) -> None:
        self._add(kind, -1)


class Stream:
    """One server stream's clock: ``send`` ends a reader stalled past ``stream_idle_s``; ``left()`` is
    what remains of ``stream_max_s``."""

    def __init__(self, context: grpc.aio.ServicerContext, limits: ServerLimits) -> None:
        self.context, self.limits = context, limits
        self.deadline = time.monotonic() + limits.stream_max_s

    def left(self) -> float:
        return self.deadline - time.monotonic()

    async def send(self, msg: Any) -> None:
        # A timer that cancels this task, not ``asyncio.wait_for``, which costs a task per message (measured:
        # 12.5 against 5.4 us per write, on every Download chunk and watch event).
        task = asyncio.current_task()
        stalled = []

        def expire() -> None:
            stalled.append(True)
            task.cancel()

        timer = asyncio.get_running_loop().call_later(self.limits.stream_idle_s, expire)
        try:
            await self.context.write(msg)
        except asyncio.CancelledError:
            if not stalled:  # cancelled from outside (the client went away, the daemon stops)
                raise
            if hasattr(task, "uncancel"):  # Python 3.11+: this cancellation is handled here
                task.uncancel()
            await abort(self.context, grpc.StatusCode.DEADLINE_EXCEEDED, "reader stalled for over {:g} s "
                        "(--stream-idle-s)".format(self.limits.stream_idle_s), wait_s=STALLED_ABORT_WAIT_S)
        finally:
            timer.cancel()


class PeerGone(Exception):
    """The call can no longer be answered (the client vanished while a write or the status was pending)."""


STALLED_ABORT_WAIT_S = 0.5  # a status queued behind data a stalled reader never takes is not waited for longer


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str,
                wait_s: float | None = None) -> None:
    """``context.abort`` that raises ``PeerGone`` instead of grpc's internal errors when the call is dead.
    With ``wait_s`` (a stalled reader: the status is queued behind data it does not take) it does not wait
    longer than that for the status to go out: it is still delivered if the reader ever reads on, and the
    handler and its slot are freed now."""
    details = status_details(details)
    try:
        if wait_s is None:
            await context.abort(code, details)
        else:
            await asyncio.wait_for(context.abort(code, details), wait_s)
    except grpc.aio.AbortError:
        raise
    except asyncio.TimeoutError:
        raise PeerGone("status queued behind unread data") from None
    except Exception as e:  # cygrpc ExecuteBatchError / UsageError: nobody to send the status to
        raise PeerGone(type(e).__name__) from None
