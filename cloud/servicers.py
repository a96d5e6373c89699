"""The cloud's gRPC servicers (``cosmo.v1.ModelRegistry``, ``cosmo.v1.Training``) on ``grpc.aio``.

Thin, as the serving model wants them: each call is admitted or refused at once (``cloud.admission``),
blocking registry work goes to a bounded executor, and errors map to status codes in one place
(``_status``). Long-lived streams are coroutines, never pinned threads:

* ``WatchModels``: every watcher is an asyncio queue fed by **one** registry subscription
  (``ModelEvents``), so a publish costs one manifest read and one message per watcher, however many
  edges watch; events committed by other processes (job workers) arrive through the registry's tailer.
* ``Download``: the blob is opened (and re-verified if it changed) in the executor; chunks already in
  the page cache are then read on the loop, others in the executor, each straight into the message
  that goes to gRPC (``encode_chunk_into``: no zero-fill, no copy into the message), and each is written
  with a stall deadline, so a stalled reader holds at most its HTTP/2 flow-control window, one
  coroutine and its admission slot until ``--stream-idle-s``.
* ``WatchJob``: a job subscription whose ``notify`` wakes the coroutine (no thread waits on it).
"""
from __future__ import annotations

import asyncio
import collections
import functools
import logging
import queue
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from shared.errors import CosmoError, clip
from shared.rpc import pb, refusal_log_level
from shared.rpc.chunks import encode_chunk_into

from . import serde
from .admission import Admission, PeerGone, Stream, abort
from .jobs import Busy, JobRunner
from .registry import MAX_CHUNK_SIZE, TERMINAL_STATES, Chunks, Registry, Subscription, check_report

log = logging.getLogger(__name__)
WATCH_QUEUE = 256  # events waiting per watcher before the oldest is dropped
MAX_LIST = 1000  # jobs one ListJobs, reports one ListReports answers


def _status(err: BaseException) -> grpc.StatusCode:
    if isinstance(err, Busy):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(err, CosmoError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return serde.status_of(err)


def rpc(kind: str) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Admission (``kind``: rpc, stream, watch, download) + error mapping for an async servicer method."""
    def wrap(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self.admission.enter(kind, context)
            try:
                return await fn(self, request, context)
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except PeerGone as e:  # end the handler without a status of its own (one is queued or moot)
                log.debug("%s: client gone or stalled (%s)", fn.__name__, e)
                raise asyncio.CancelledError() from None
            except Exception as e:
                if context.cancelled():  # the client went away (a write to it failed): nothing to answer
                    log.debug("%s: client cancelled (%s)", fn.__name__, type(e).__name__)
                    return None
                code = _status(e)
                details = str(e)
                if code == grpc.StatusCode.INTERNAL:
                    log.exception("internal error in %s", fn.__name__)
                else:  # a client's mistake: one line, escaped (a client string cannot forge a log line)
                    log.log(refusal_log_level(code),
                            "%s from %s: %s %s", fn.__name__, context.peer(), code.name, clip(details, 300))
                try:
                    await abort(context, code, details)
                except PeerGone:
                    raise asyncio.CancelledError() from None
            finally:
                self.admission.leave(kind)
        return wrapper
    return wrap


def waker(loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> Callable[[], None]:
    """A registry ``notify`` callback: sets ``event`` on ``loop`` from any thread (a no-op once the loop is
    closed, while the daemon stops)."""
    def wake() -> None:
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:
            pass
    return wake


class Blocking:
    """The bounded executor for blocking registry work (SQLite, blob reads, job control)."""

    def __init__(self, threads: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cloud-io")

    async def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args))

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class Watcher:
    """One WatchModels stream's queue of ready messages (oldest dropped past ``maxsize``)."""

    def __init__(self, name: str | None, since: int, maxsize: int = WATCH_QUEUE) -> None:
        self.name, self.since, self.maxsize = name, since, maxsize  # since: events up to this seq are not owed
        self.queue: collections.deque[Any] = collections.deque()
        self.ready = asyncio.Event()
        self.closed = False

    def offer(self, msg: Any) -> None:
        if len(self.queue) >= self.maxsize:
            self.queue.popleft()
        self.queue.append(msg)
        self.ready.set()

    def close(self) -> None:
        self.closed = True
        self.ready.set()

    async def next(self, timeout: float) -> Any | None:
        """The next message; ``None`` when closed or after ``timeout`` seconds without one."""
        while not self.queue:
            if self.closed:
                return None
            self.ready.clear()
            try:
                await asyncio.wait_for(self.ready.wait(), max(0.0, timeout))
            except asyncio.TimeoutError:
                return None
        return self.queue.popleft()


class ModelEvents:
    """Fans the registry's model events out to every watcher from one subscription, and caches manifest
    and list reads between events (a publish invalidates them before any watcher hears of it)."""

    def __init__(self, registry: Registry, blocking: Blocking) -> None:
        self.registry, self.blocking = registry, blocking
        self.loop = asyncio.get_running_loop()
        self.watchers: set[Watcher] = set()
        self._cache: dict[tuple[Any, ...], Any] = {}
        self._pending: dict[tuple[Any, ...], asyncio.Task[Any]] = {}
        self._generation = 0
        self._wake = asyncio.Event()
        self._sub: Subscription = registry.subscribe(maxsize=65536, notify=waker(self.loop, self._wake))
        self._task = self.loop.create_task(self._run())

    async def cached(self, key: tuple[Any, ...], fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` (a registry read) through the cache; concurrent misses of one key share one read,
        so a fleet asking for a new manifest at once costs one SQLite query, not one per edge."""
        if key in self._cache:
            return self._cache[key]
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = self.loop.create_task(self._load(key, fn, args))
        return await asyncio.shield(pending)

    async def _load(self, key: tuple[Any, ...], fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        gen = self._generation
        try:
            value = await self.blocking(fn, *args)
        finally:
            if self._pending.get(key) is asyncio.current_task():
                del self._pending[key]
        if gen == self._generation:  # no event in between: still current
            self._cache[key] = value
        return value

    def add(self, name: str | None) -> Watcher:
        w = Watcher(name, self.registry.last_event_id)
        self.watchers.add(w)
        return w

    def remove(self, w: Watcher) -> None:
        self.watchers.discard(w)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                try:
                    ev = self._sub.get_nowait()
                except queue.Empty:
                    break
                if ev is None:  # subscription closed: the registry is closing
                    self.close()
                    return
                self._cache.clear()
                self._pending.clear()  # reads started before the event must not be shared after it
                self._generation += 1
                if ev.get("dropped"):
                    log.warning("model event fan-out fell %d events behind", ev["dropped"])
                model = None
                if ev["kind"] != "DELETED" and ev.get("version"):
                    try:
                        model = await self.cached(("get", ev["name"], ev["version"]), self.registry.get,
                                                  ev["name"], ev["version"])
                    except Exception:  # deleted since: the event goes out without the manifest
                        model = None
                msg = serde.model_event(ev, model)
                for w in list(self.watchers):
                    if (w.name is None or w.name == ev["name"]) and ev["seq"] > w.since:
                        w.offer(msg)

    def close(self) -> None:
        self.registry.unsubscribe(self._sub)
        for w in list(self.watchers):
            w.close()
        self._task.cancel()


def _next_message(chunks: Chunks, nowait: bool = False) -> tuple[bytes | None, bool]:
    """(the next Download message (a serialized Chunk) or None after the last, whether it is the last).
    After the last chunk the reader is run to its end here, so its check that the blob did not change
    while read (``DataLoss``) happens before that message goes out, and without another hop.
    ``nowait``: ``BlockingIOError`` when the chunk is not in the page cache (``Chunks.read``)."""
    offset, length = chunks.pos, chunks.next_length()
    if length == 0:
        chunks.finish()
        return None, True
    msg = encode_chunk_into(offset, length, chunks.size, chunks.sha256, lambda view: chunks.readinto(view, nowait))
    last = chunks.pos >= chunks.size
    if last:
        chunks.finish()
    return msg, last


class ReportWriter:
    """Group commit of ReportMetrics: reports that arrive while a batch is being written go into the next
    one, written in one transaction (one fsync) by one executor call. A fleet reporting at once costs a
    handful of commits instead of one per edge, and no more than one executor thread."""

    MAX_BATCH = 512

    def __init__(self, registry: Registry, blocking: Blocking) -> None:
        self.registry, self.blocking = registry, blocking
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._writer: asyncio.Task[Any] | None = None

    async def submit(self, row: tuple[Any, ...]) -> int:
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((row, fut))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:self.MAX_BATCH], self._queue[self.MAX_BATCH:]
            try:
                results = await self.blocking(self.registry.insert_reports, [row for row, _ in batch])
            except Exception as e:  # the whole batch failed (disk full, ...): every caller hears of it
                results = [e] * len(batch)
            for (_, fut), res in zip(batch, results):
                if fut.done():  # the caller went away
                    continue
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)


class ModelRegistryServicer:
    def __init__(self, registry: Registry, admission: Admission, blocking: Blocking, events: ModelEvents) -> None:
        self.registry, self.admission, self.blocking, self.events = registry, admission, blocking, events
        self.limits = admission.limits
        self.reports = ReportWriter(registry, blocking)

    def _list(self, name: str | None) -> Awaitable[list[dict[str, Any]]]:
        return self.events.cached(("list", name), self.registry.list_versions, name)

    @rpc("rpc")
    async def ListModels(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ListModelsResponse(versions=[serde.model_version(m) for m in await self._list(request.name or None)])

    @rpc("rpc")
    async def GetManifest(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not request.name:
            raise ValueError("field 'name' is required")
        if request.WhichOneof("ref") == "version":
            key, kw = ("get", request.name, request.version), {"version": request.version}
        else:
            alias = request.alias or "latest"
            key, kw = ("alias", request.name, alias), {"alias": alias}
        m = await self.events.cached(key, functools.partial(self.registry.get, **kw), request.name)
        return serde.model_version(m)

    @rpc("download")
    async def Download(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        if not request.name or not request.file or request.version <= 0:
            raise ValueError("fields 'name', 'version' (> 0) and 'file' are required")
        if request.offset < 0:
            raise ValueError("field 'offset' must be >= 0, got {}".format(request.offset))
        if request.chunk_size > MAX_CHUNK_SIZE:
            raise ValueError("field 'chunk_size' must be at most {} bytes, got {}".format(MAX_CHUNK_SIZE,
                                                                                   request.chunk_size))
        # checks the file and, when its blob changed since it was verified, re-hashes it (DATA_LOSS), then
        # reads and encodes the first message
        chunks, msg, last = await self.blocking(self._open, request.name, request.version, request.file,
                                                request.offset, request.chunk_size)
        stream = Stream(context, self.limits)
        in_thread = False
        try:
            while msg is not None:
                if stream.left() <= 0:
                    await abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "download open for over {:g} s "
                                "(--stream-max-s); resume from where you are".format(self.limits.stream_max_s))
                await stream.send(msg)
                if last:
                    return
                try:  # from the page cache on the loop: no thread handoff (half the server's CPU per byte)
                    msg, last = _next_message(chunks, nowait=True)
                except BlockingIOError:  # not cached: the disk read goes to the executor
                    in_thread = True
                    msg, last = await self.blocking(_next_message, chunks)
                    in_thread = False
        finally:
            if not in_thread:  # else a thread still reads it (we were cancelled): its __del__ closes it after
                chunks.close()

    def _open(self, name: str, version: int, file: str, offset: int,
              chunk_size: int) -> tuple[Chunks, bytes | None, bool]:
        chunks = self.registry.read_chunks(name, version, file, offset, chunk_size)  # raised to the floor
        return (chunks,) + _next_message(chunks)

    @rpc("watch")
    async def WatchModels(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        stream = Stream(context, self.limits)
        w = self.events.add(request.name or None)  # subscribe first, then list: no gap
        try:
            if request.send_current:
                for m in await self._list(request.name or None):
                    await stream.send(serde.model_event({"kind": "CURRENT", "name": m["name"],
                                                         "version": m["version"]}, m))
            while True:
                msg = await w.next(stream.left())
                if msg is None:  # --stream-max-s reached, or the daemon is stopping: the edge re-subscribes
                    return
                await stream.send(msg)
        finally:
            self.events.remove(w)

    @rpc("rpc")
    async def ReportMetrics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not request.edge_id:
            raise ValueError("field 'edge_id' is required")
        stages = [{"stage": s.stage, "wall_seconds": s.wall_seconds, "cpu_seconds": s.cpu_seconds,
                   "energy_joules": s.energy_joules, "energy_source": s.energy_source,
                   "peak_memory_mb": s.peak_memory_mb} for s in request.stages]
        row = check_report(request.edge_id, request.name, int(request.version), stages, dict(request.metrics),
                           request.device, request.execution_provider)
        rid = await self.reports.submit(row)
        return pb.ReportMetricsResponse(report_id=int(rid))


    # -- administration

    @rpc("rpc")
    async def SetAlias(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self.blocking(self.registry.set_alias, request.name, request.alias, int(request.version))
        log.info("alias %s:%s -> v%d (set by %s)", clip(request.name), clip(request.alias), request.version,
                 context.peer())
        return serde.model_version(await self.blocking(self.registry.get, request.name, int(request.version)))

    @rpc("rpc")
    async def PinVersion(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        fn = self.registry.pin if request.pinned else self.registry.unpin
        await self.blocking(fn, request.name, int(request.version))
        log.info("%s:v%d %s (by %s)", clip(request.name), request.version, "pinned" if request.pinned else "unpinned",
                 context.peer())
        return serde.model_version(await self.blocking(self.registry.get, request.name, int(request.version)))

    @rpc("rpc")
    async def DeleteVersion(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self.blocking(self.registry.delete, request.name, int(request.version))
        log.info("%s:v%d deleted (by %s)", clip(request.name), request.version, context.peer())
        return pb.DeleteVersionResponse(name=request.name, version=request.version)

    @rpc("rpc")
    async def ListReports(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        limit = request.limit or 100
        if not 0 < limit <= MAX_LIST:
            raise ValueError("field 'limit' must be in 1..{}, got {}".format(MAX_LIST, request.limit))
        rows = await self.blocking(self.registry.list_reports, request.name or None, int(request.version) or None,
                                   limit)
        return pb.ListReportsResponse(reports=[serde.report(r) for r in rows])


class TrainingServicer:
    def __init__(self, registry: Registry, runner: JobRunner, admission: Admission, blocking: Blocking) -> None:
        self.registry, self.runner, self.admission, self.blocking = registry, runner, admission, blocking
        self.limits = admission.limits

    @rpc("rpc")
    async def SubmitJob(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return serde.job(await self.blocking(self.runner.submit, request.kind, request.dataset, request.config_json))

    @rpc("rpc")
    async def GetJob(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return serde.job(await self.blocking(self.registry.get_job, request.id))

    @rpc("rpc")
    async def CancelJob(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return serde.job(await self.blocking(self.runner.cancel, request.id))

    @rpc("rpc")
    async def ListJobs(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        limit = request.limit or 100
        if not 0 < limit <= MAX_LIST:
            raise ValueError("field 'limit' must be in 1..{}, got {}".format(MAX_LIST, request.limit))
        states = [pb.Job.State.Name(s) for s in request.states] if request.states else None
        if states and "STATE_UNSPECIFIED" in states:
            raise ValueError("field 'states': STATE_UNSPECIFIED is not a job state")
        jobs = await self.blocking(self.registry.list_jobs, states)
        return pb.ListJobsResponse(jobs=[serde.job(dict(j, config_json="")) for j in reversed(jobs[-limit:])])

    @rpc("watch")
    async def WatchJob(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        """The job now, then every update until it ends (updates of worker processes arrive through the
        registry's event log)."""
        job_id = await self.blocking(self.registry.resolve_job_id, request.id)
        ready = asyncio.Event()
        sub = self.registry.subscribe_jobs(job_id, notify=waker(asyncio.get_running_loop(), ready))
        stream = Stream(context, self.limits)
        try:
            j = await self.blocking(self.registry.get_job, job_id)
            config_json = j["config_json"]  # not in the events (it never changes)
            await stream.send(serde.job(j))
            while j["state"] not in TERMINAL_STATES:
                try:
                    ev = sub.get_nowait()
                except queue.Empty:
                    ready.clear()
                    try:
                        await asyncio.wait_for(ready.wait(), max(0.0, stream.left()))
                    except asyncio.TimeoutError:
                        return
                    continue
                if ev is None:  # the registry closed the subscription
                    return
                j = dict(ev["job"], config_json=config_json)
                await stream.send(serde.job(j))
        finally:
            self.registry.unsubscribe(sub)
