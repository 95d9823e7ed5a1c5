"""Group commit: concurrent requests' round trips to a server made as one per group.

A request that finds no round trip in flight makes its own at once, alone: nothing is added
when the API is quiet. Requests that arrive meanwhile queue; when the round trip in flight ends,
the request at the head of the queue makes one for every queued request (up to `max_size`),
and each waits for the group holding its own item. Under load a group grows with the load, so
the server gets one round trip per group instead of one per request.

Only requests that queued before a group's round trip started are in it, so what a request
gets was read or written after it arrived (an account revoked a moment before is seen as
revoked). No thread is needed (the requests take turns), so it works the same under gunicorn's
gevent workers and in plain threads.

Under gevent a leader first lets every greenlet that is ready to run have its turn
(gevent.idle, for at most 5 ms) before it takes its group: requests whose data arrived together
then reach the queue and share the round trip, where otherwise the first would go alone and the
rest wait for it to end. At 500 device writes/s (two 30 s runs each way) this took the round
trips per request from 0.65-0.74 to 0.54-0.58, and 9 % off the CPU of the auth server, MariaDB
and InfluxDB together. In plain threads there is no such turn to give, so nothing is done.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(slots=True, eq=False)
class Pending(Generic[Item, Result]):
    """One request's item in the queue, and then its answer."""

    item: Item
    size: int  # what it counts against a group's max_size
    done: threading.Event = field(default_factory=threading.Event)
    taken: bool = False  # in a group in flight: it will end without this request's help
    leads: bool = False  # handed the lead: this request makes the next round trip
    result: Result | None = None
    error: BaseException | None = None


# The longest a leader waits for the others' turn: libev gets to its idle watchers only in a
# pass that found no other event, which a loop busy with many connections may never have.
GATHER_MAX_S = 0.005


def ready_greenlets_first() -> Callable[[], None] | None:
    """A wait for the event loop to go idle (at most GATHER_MAX_S) when this process runs on
    gevent's monkey-patched threading (the server's workers), else None: a real thread must not
    start a gevent hub of its own."""
    if "gevent.monkey" not in sys.modules:
        return None
    import gevent
    from gevent import monkey

    if not monkey.is_module_patched("threading"):
        return None

    def gather() -> None:
        with gevent.Timeout(GATHER_MAX_S, False):  # False: the timeout ends the wait quietly
            gevent.idle()

    return gather


class GroupCommit(Generic[Item, Result]):
    """The turn-taking of group commit; `_run` is the round trip of one group, which sets each
    pending's `result` or `error`."""

    def __init__(self, wait_s: float, max_size: int) -> None:
        self._wait_s = wait_s
        self._max_size = max_size
        self._lock = threading.Lock()
        self._queue: deque[Pending[Item, Result]] = deque()
        self._writing = False  # a group's round trip is in flight
        self._gather = ready_greenlets_first()

    def _run(self, group: list[Pending[Item, Result]]) -> None:
        raise NotImplementedError

    def _too_slow(self) -> BaseException:
        """The error of a request not taken into a group within `wait_s`."""
        raise NotImplementedError

    def _failed(self, exc: BaseException) -> BaseException:
        """The error of a group's requests when `_run` itself raised `exc`."""
        return exc

    def submit(self, item: Item, size: int = 1) -> Result | None:
        """`item`'s result; raises what its round trip alone would have raised."""
        mine: Pending[Item, Result] = Pending(item, size)
        with self._lock:
            self._queue.append(mine)
            leads = not self._writing
            self._writing = True
        if not leads:
            self._wait(mine)
            leads = mine.leads
        if leads:
            self._lead()
        if mine.error is not None:
            raise mine.error
        return mine.result

    def _wait(self, mine: Pending[Item, Result]) -> None:
        """Until `mine` is done or handed the lead; a request not taken into a group within
        `wait_s` leaves the queue with `_too_slow()`."""
        if mine.done.wait(self._wait_s):
            return
        with self._lock:
            if not mine.taken and not mine.leads:
                self._queue.remove(mine)
                mine.error = self._too_slow()
                mine.done.set()
                return
        # Taken into a group in flight (its round trip has its own timeout), or just made leader.
        mine.done.wait()

    def _lead(self) -> None:
        """Run one group from the head of the queue (this request's item is in it), then hand
        the lead to the next queued request."""
        if self._gather is not None:
            self._gather()  # requests ready to run queue first, and join this group
        with self._lock:
            group = [self._queue.popleft()]
            size = group[0].size
            while self._queue and size + self._queue[0].size <= self._max_size:
                group.append(self._queue.popleft())
                size += group[-1].size
            for pending in group:
                pending.taken = True
        try:
            self._run(group)
        except BaseException as exc:
            # Whatever stopped the round trip (a lost connection, a bug, the worker's timeout):
            # no request of the group may take a result it did not get.
            error = self._failed(exc)
            for pending in group:
                if pending.error is None:
                    pending.error = error
                    pending.result = None
            raise
        finally:
            with self._lock:
                if self._queue:
                    self._queue[0].leads = True
                    self._queue[0].done.set()
                else:
                    self._writing = False
            for pending in group:
                pending.done.set()
