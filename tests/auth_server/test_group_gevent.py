"""Group commit under gevent, as in the server's workers (auth_server.group): requests that
became ready together share one round trip. Run in a process of its own, because gevent must
patch the standard library before anything else is imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.servers import REPO_ROOT

SCRIPT = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import json
    import socket
    import sys
    import threading

    import gevent

    from auth_server.group import GroupCommit

    class Recorder(GroupCommit[int, int]):
        def __init__(self) -> None:
            super().__init__(wait_s=5, max_size=100)
            self.groups: list[list[int]] = []

        def _run(self, group) -> None:
            self.groups.append([pending.item for pending in group])
            gevent.sleep(0.01)  # the round trip: the others wait on it, as on a socket
            for pending in group:
                pending.result = pending.item * 10

    recorder = Recorder()
    start = threading.Event()
    results: list[int | None] = []

    def request(n: int) -> None:
        start.wait()  # every request's data "arrives" at the same moment
        results.append(recorder.submit(n))

    def ping_pong(sock: socket.socket, first: bool) -> None:
        # Two of these keep an I/O event pending at every pass of the loop: it never goes idle.
        if first:
            sock.send(b"x")
        while True:
            sock.send(sock.recv(1))

    mode = sys.argv[1]
    if mode == "off":
        recorder._gather = None  # as in plain threads
    elif mode.startswith("busy"):
        if mode == "busy-unbounded":
            recorder._gather = gevent.idle
        left, right = socket.socketpair()
        gevent.spawn(ping_pong, left, True)
        gevent.spawn(ping_pong, right, False)
    greenlets = [gevent.spawn(request, n) for n in range(8)]
    gevent.sleep(0)
    start.set()
    gevent.joinall(greenlets, timeout=3)
    print(json.dumps({"groups": recorder.groups, "results": sorted(results)}), flush=True)
    sys.exit(0)
    """
)


def run(mode: str) -> dict[str, list]:
    command = [sys.executable, "-c", SCRIPT, mode]
    done = subprocess.run(command, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_requests_ready_together_share_one_round_trip() -> None:
    gathered = run("on")
    assert gathered["groups"] == [[0, 1, 2, 3, 4, 5, 6, 7]]
    assert gathered["results"] == [n * 10 for n in range(8)]


def test_without_the_gathering_the_first_goes_alone() -> None:
    # What the gathering changes: the first request leaves alone, the rest wait for it.
    alone = run("off")
    assert alone["groups"] == [[0], [1, 2, 3, 4, 5, 6, 7]]
    assert alone["results"] == [n * 10 for n in range(8)]


def test_a_loop_that_never_goes_idle_delays_a_group_only_briefly() -> None:
    """Under a load that keeps the event loop from ever going idle, the leader stops waiting
    for it (GATHER_MAX_S) and the group goes: every request is answered."""
    busy = run("busy")
    assert busy["results"] == [n * 10 for n in range(8)]
    assert sum(len(group) for group in busy["groups"]) == 8
    # Without the bound, the first leader would wait for the idle loop for ever.
    assert run("busy-unbounded")["results"] == []
