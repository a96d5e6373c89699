"""Registry events: the change log in SQLite, its delivery to subscribers, and ``Subscription``.

Every change that makes an event (publish, alias move or removal, delete, job create/update) appends it
to the ``events`` table **in the same transaction**, so an event exists if and only if its change
committed, and its id (``seq``) is the commit order. Delivery reads that log: right after each commit
made through this object (so the event is queued before the call returns) and every ``event_poll_s``
(0.25 s) from one tailer thread, so subscribers also hear of changes made by other processes on the
same data dir (the job runner's worker processes publish that way). Only the newest rows are kept
(``Retention.events_keep``): the log feeds live delivery, it is not a history.

``subscribe`` returns a :class:`Subscription`, a bounded queue. Delivery never blocks on it: when it is
full the **oldest** event is dropped and the event that is now the oldest gets ``dropped`` set to how
many events were lost just before it (0 otherwise), so a watcher can resynchronize (for example by
re-listing). An asyncio server passes ``notify`` (e.g. ``loop.call_soon_threadsafe`` of an event's
``set``) instead of blocking a thread in ``get``: no thread per subscriber.
"""
from __future__ import annotations

import collections
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .errors import InvalidArgument, RegistryError
from .limits import DEFAULT_QUEUE_SIZE, Retention
from .validation import _check_name, _dumps, _utc_now

log = logging.getLogger("cloud.registry")
EVENT_KINDS = ("PUBLISHED", "ALIAS_MOVED", "DELETED")
Event = dict[str, Any]


class Subscription:
    """A bounded, thread-safe queue of registry events (dicts), from :meth:`Registry.subscribe`.

    Producers never block: when ``maxsize`` events are waiting, the oldest is dropped, ``dropped_total``
    grows and the event now at the head gets ``event["dropped"]`` incremented (the number of events lost
    just before it). ``get`` returns ``None`` once the subscription is closed and drained.
    """

    def __init__(self, maxsize: int = DEFAULT_QUEUE_SIZE, name: str | None = None, topic: str = "models",
                 notify: Callable[[], None] | None = None) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise InvalidArgument("maxsize", "{!r} must be an int >= 1".format(maxsize))
        self.maxsize = maxsize
        self.name = name  # model name (topic "models") or job id (topic "jobs"); None: all
        self.topic = topic
        self.since = 0  # id of the last logged event before this subscription began
        self.dropped_total = 0
        self._events: collections.deque[Event] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._notify = notify  # called after each put and on close, outside the lock; must not block

    @property
    def closed(self) -> bool:
        return self._closed

    def qsize(self) -> int:
        with self._cond:
            return len(self._events)

    def empty(self) -> bool:
        return self.qsize() == 0

    def put(self, event: Event) -> None:
        """Enqueue a copy of ``event`` without blocking (drops the oldest when full; no-op once closed)."""
        with self._cond:
            if self._closed:
                return
            self._events.append(dict(event))
            lost = 0  # events lost before the new head: the dropped ones and the gaps they carried
            while len(self._events) > self.maxsize:
                gone = self._events.popleft()
                self.dropped_total += 1
                lost += 1 + gone.get("dropped", 0)
            if lost:
                head = self._events[0]
                head["dropped"] = head.get("dropped", 0) + lost
            self._cond.notify_all()
        if self._notify is not None:
            self._notify()

    def get(self, block: bool = True, timeout: float | None = None) -> Event | None:
        """The oldest event; ``None`` once closed and drained; ``queue.Empty`` on timeout (seconds)."""
        with self._cond:
            if block:
                deadline = None if timeout is None else time.monotonic() + timeout
                while not self._events and not self._closed:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise queue.Empty
                    self._cond.wait(left)
            if self._events:
                return self._events.popleft()
            if self._closed:
                return None
            raise queue.Empty

    def get_nowait(self) -> Event | None:
        return self.get(block=False)

    def close(self) -> None:
        """Wake waiting readers; queued events can still be read, then ``get`` returns ``None``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._notify is not None:
            self._notify()

    def __iter__(self) -> Iterator[Event]:
        """Events until the subscription is closed (blocks between events)."""
        while True:
            ev = self.get()
            if ev is None:
                return
            yield ev


class Events:
    """Change log and subscriptions (mixed into ``Registry``)."""

    retention: Retention
    _subs: list[Subscription]
    _subs_lock: threading.Lock
    _pump_lock: threading.Lock
    _last_event: int
    _event_poll_s: float
    _tail_stop: threading.Event
    _tailer: threading.Thread | None
    _closed: bool
    _conn: Callable[[], sqlite3.Connection]

    # -- events

    def subscribe(self, name: str | None = None, maxsize: int = DEFAULT_QUEUE_SIZE,
                  notify: Callable[[], None] | None = None) -> Subscription:
        """A queue of model events (of model ``name``, or all): dicts ``{kind: PUBLISHED | ALIAS_MOVED |
        DELETED, name, version, alias, seq, dropped}``. ``alias`` is ``None`` except for ALIAS_MOVED;
        ALIAS_MOVED with ``version=None`` means the alias was removed. A publish sends PUBLISHED then one
        ALIAS_MOVED per alias it moved. ``seq`` is the commit order (the same in every process). Changes
        made through this object arrive before the call that made them returns; changes made by other
        processes (or other ``Registry`` objects) within ``event_poll_s``. To list the current state
        without a gap, subscribe first, then list.
        """
        if name is not None:
            _check_name(name)
        return self._add_sub(Subscription(maxsize, name, "models", notify))

    def subscribe_jobs(self, job_id: str | None = None, maxsize: int = DEFAULT_QUEUE_SIZE,
                       notify: Callable[[], None] | None = None) -> Subscription:
        """A queue of job events (of job ``job_id``, or all): ``{kind: "JOB_UPDATED", job, seq, dropped}``
        with ``job`` as ``get_job`` returns it, sent on create, update, claim and recovery."""
        return self._add_sub(Subscription(maxsize, job_id, "jobs", notify))

    def _add_sub(self, sub: Subscription) -> Subscription:
        with self._pump_lock:
            top = self._conn().execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
            with self._subs_lock:
                if not self._subs:
                    self._last_event = top  # nobody listened: nothing older is owed to anyone
                sub.since = top
                self._subs.append(sub)
                if self._tailer is None:
                    self._tailer = threading.Thread(target=self._tail, name="registry-events", daemon=True)
                    self._tailer.start()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to ``sub`` and close it (idempotent)."""
        with self._subs_lock:
            if sub in self._subs:
                self._subs.remove(sub)
        sub.close()

    def _log_event(self, c: sqlite3.Connection, kind: str, name: str, version: int | None,
                   alias: str | None) -> None:
        self._append_event(c, "models", name, {"kind": kind, "name": name, "version": version, "alias": alias})

    def _append_event(self, c: sqlite3.Connection, topic: str, key: str, body: dict[str, Any]) -> None:
        """Log an event inside the caller's transaction: it exists if and only if the change commits."""
        cur = c.execute("INSERT INTO events (topic, key, body_json, created_at) VALUES (?, ?, ?, ?)",
                        (topic, key, _dumps(body), _utc_now()))
        c.execute("DELETE FROM events WHERE id <= ?", (cur.lastrowid - self.retention.events_keep,))

    def _pump(self) -> None:
        """Deliver logged events newer than the last delivered one, in commit order, to the subscribers.

        Called after each of this object's commits and every ``event_poll_s`` by the tailer thread (for
        other processes' commits). ``Subscription.put`` never blocks, so neither does this for long.
        """
        if not self._subs:
            return
        try:
            with self._pump_lock:
                rows = self._conn().execute("SELECT id, topic, key, body_json FROM events WHERE id > ? ORDER BY id",
                                            (self._last_event,)).fetchall()
                if not rows:
                    return
                with self._subs_lock:
                    subs = list(self._subs)
                first = rows[0][0]
                for event_id, topic, key, body in rows:
                    ev = json.loads(body)
                    ev["seq"] = event_id
                    for sub in subs:
                        if sub.topic == topic and event_id > sub.since and (sub.name is None or sub.name == key):
                            # ids are contiguous, so a gap before the first row means the log was pruned
                            # faster than delivered (a stalled process): count it as dropped.
                            gap = first - max(self._last_event, sub.since) - 1 if event_id == first else 0
                            sub.put(dict(ev, dropped=max(0, gap)))
                self._last_event = rows[-1][0]
        except (sqlite3.Error, RegistryError):
            if not self._closed:  # the change itself is committed; only its notification failed
                log.exception("registry event delivery failed")

    def _tail(self) -> None:
        """Tailer thread: pick up events committed by other processes (or other Registry objects)."""
        while not self._tail_stop.wait(self._event_poll_s):
            self._pump()


    @property
    def last_event_id(self) -> int:
        """Id (``seq``) of the last event delivered to this object's subscribers."""
        return self._last_event

    def _close_events(self) -> None:
        self._tail_stop.set()
        if self._tailer is not None and self._tailer is not threading.current_thread():
            self._tailer.join(10.0)
        with self._subs_lock:
            subs, self._subs = self._subs, []
        for s in subs:
            s.close()
