"""Login throttling against a real MariaDB: guessing slows down per username and address, per
address and per username, and nobody else's failures lock an owner out where it logs in."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from auth_server import create_app
from auth_server.throttle import LoginThrottle, client_key
from tests.auth_server.conftest import ADMIN, Api, Sql

OWNER_HOME = "198.51.100.10"
STRANGER = "203.0.113.66"


class Clock:
    """The throttle's clock, moved by the test: delays are seconds to minutes long."""

    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(app: Flask) -> Clock:
    fake = Clock()
    throttle: LoginThrottle = app.extensions["login_throttle"]
    throttle.clock = fake
    return fake


def login(api: Api, username: str, password: str, address: str, **headers: str) -> TestResponse:
    return api.call(
        "POST",
        "/api/auth/login",
        json={"username": username, "password": password},
        environ_base={"REMOTE_ADDR": address},
        headers=headers,
    )


def statuses(api: Api, username: str, password: str, address: str, times: int) -> list[int]:
    return [login(api, username, password, address).status_code for _ in range(times)]


def test_guessing_from_one_address_waits_longer_after_each_failure(api: Api, clock: Clock) -> None:
    # The 5 free failures, then the 6th, which makes the next attempt wait 1 s.
    assert statuses(api, ADMIN, "wrong-password", STRANGER, 6) == [401] * 6
    waits = []
    for _ in range(6):
        refused = login(api, ADMIN, "wrong-password", STRANGER)
        assert refused.status_code == 429
        assert set(refused.get_json()) == {"error"}
        wait = int(refused.headers["Retry-After"])
        waits.append(wait)
        clock.advance(wait - 0.5)
        assert login(api, ADMIN, "wrong-password", STRANGER).status_code == 429  # not yet
        clock.advance(0.5)
        assert login(api, ADMIN, "wrong-password", STRANGER).status_code == 401  # heard, and wrong
    assert waits == [1, 2, 4, 8, 16, 32]
    assert api.metric("auth_logins_total", result="failure") == 12


def test_the_reproduction_400_guesses_in_40_s_are_11_checked_passwords(api: Api, clock: Clock) -> None:
    """Before: 400 wrong admin passwords in 40 s, each one checked. Now most are refused
    unchecked; the clock moves 0.1 s per attempt, as fast as that client went."""
    counts: Counter[int] = Counter()
    for _ in range(400):
        counts[login(api, ADMIN, "wrong-password", STRANGER).status_code] += 1
        clock.advance(0.1)
    # 40 s: 6 at once, then after waits of 1 + 2 + 4 + 8 + 16 s (31 s) five more; the next
    # wait (32 s) ends after the 40 s.
    assert counts == {401: 11, 429: 389}
    assert api.metric("auth_login_throttled_total", scope="pair") == 389


def test_a_blocked_attempt_is_not_checked_even_with_the_right_password(
    api: Api, clock: Clock, settings: dict[str, str]
) -> None:
    assert statuses(api, ADMIN, "wrong-password", STRANGER, 6) == [401] * 6
    # Right password, but blocked: no token, and nothing learnt about the password.
    assert login(api, ADMIN, settings["ADMIN_PASSWORD"], STRANGER).status_code == 429
    assert api.metric("auth_logins_total", result="success") == 0
    clock.advance(1)
    assert login(api, ADMIN, settings["ADMIN_PASSWORD"], STRANGER).status_code == 200


def test_a_success_clears_the_owners_own_failures(api: Api, clock: Clock, settings: dict[str, str]) -> None:
    for _ in range(3):
        assert statuses(api, ADMIN, "typo-password", OWNER_HOME, 5) == [401] * 5
        assert login(api, ADMIN, settings["ADMIN_PASSWORD"], OWNER_HOME).status_code == 200


def test_a_strangers_guessing_never_locks_the_owner_out_at_home(
    api: Api, clock: Clock, settings: dict[str, str]
) -> None:
    password = settings["ADMIN_PASSWORD"]
    assert login(api, ADMIN, password, OWNER_HOME).status_code == 200
    # One stranger, then a crowd of 40 addresses with 2 guesses each against the same name.
    statuses(api, ADMIN, "wrong-password", STRANGER, 30)
    for i in range(40):
        statuses(api, ADMIN, "wrong-password", f"192.0.2.{i}", 2)
    assert api.metric("auth_login_delays_total", scope="username") >= 1
    # The crowd is now refused unchecked, even from addresses it has not used yet ...
    assert login(api, ADMIN, "wrong-password", "192.0.2.200").status_code == 429
    assert login(api, ADMIN, password, "192.0.2.201").status_code == 429
    # ... while the owner, from where it logged in before, is heard at once.
    assert login(api, ADMIN, password, OWNER_HOME).status_code == 200
    assert api.metric("auth_login_throttled_total", scope="username") >= 2


def test_one_address_trying_many_usernames_is_slowed_but_its_known_devices_are_not(
    api: Api, clock: Clock
) -> None:
    """Devices behind one NAT share an address: one that guesses must not stop the others."""
    nat = "100.64.7.1"
    known_password, _ = api.device("known-dev")
    assert login(api, "known-dev", known_password, nat).status_code == 200
    new_password_ = api.device("new-dev")[0]
    # 20 free failures for the address over any names, then the 21st makes the next one wait.
    assert [login(api, f"guess-{i}", "wrong-password", nat).status_code for i in range(21)] == [401] * 21
    assert login(api, "guess-x", "wrong-password", nat).status_code == 429
    # A device that has not logged in from here before waits like the guesser ...
    assert login(api, "new-dev", new_password_, nat).status_code == 429
    # ... one that has is heard, and the same names elsewhere are not affected.
    assert login(api, "known-dev", known_password, nat).status_code == 200
    assert login(api, "new-dev", new_password_, "100.64.7.2").status_code == 200
    assert api.metric("auth_login_throttled_total", scope="address") == 2


def test_a_known_clients_failures_count_only_against_itself(api: Api, clock: Clock) -> None:
    """A device with a rotated password retrying from its usual address slows itself down,
    not the address (the other devices behind the same NAT) and not its name elsewhere."""
    nat = "100.64.8.1"
    password, _ = api.device("rotated")
    assert login(api, "rotated", password, nat).status_code == 200
    statuses(api, "rotated", "old-password", nat, 60)
    assert login(api, "someone-else", "wrong-password", nat).status_code == 401
    assert login(api, "rotated", password, "100.64.9.9").status_code == 200


def test_failures_are_forgotten_after_the_memory_window(
    api: Api, clock: Clock, settings: dict[str, str]
) -> None:
    assert statuses(api, ADMIN, "wrong-password", STRANGER, 6) == [401] * 6
    clock.advance(3601)  # LOGIN_FAILURE_MEMORY_SECONDS: an hour after the latest failure
    assert statuses(api, ADMIN, "wrong-password", STRANGER, 6) == [401] * 6
    assert login(api, ADMIN, "wrong-password", STRANGER).status_code == 429


@pytest.mark.parametrize(
    ("variable", "value", "free", "scope_address"),
    [
        ("LOGIN_FREE_FAILURES", "2", 2, False),
        ("LOGIN_ADDRESS_FREE_FAILURES", "3", 3, True),
    ],
)
def test_the_free_failures_are_settings(
    settings: dict[str, str], variable: str, value: str, free: int, scope_address: bool
) -> None:
    app = create_app({**settings, variable: value})
    app.extensions["login_throttle"].clock = Clock()
    api = Api(app.test_client(), settings)
    names = [f"n{i}" if scope_address else ADMIN for i in range(free + 1)]
    assert [login(api, n, "wrong-password", STRANGER).status_code for n in names] == [401] * (free + 1)
    assert login(api, names[0], "wrong-password", STRANGER).status_code == 429


def test_the_longest_wait_is_a_setting(settings: dict[str, str]) -> None:
    app = create_app({**settings, "LOGIN_MAX_DELAY_SECONDS": "5"})
    clock = Clock()
    app.extensions["login_throttle"].clock = clock
    api = Api(app.test_client(), settings)
    statuses(api, ADMIN, "wrong-password", STRANGER, 6)
    waits = []
    for _ in range(5):
        waits.append(int(login(api, ADMIN, "wrong-password", STRANGER).headers["Retry-After"]))
        clock.advance(waits[-1])
        assert login(api, ADMIN, "wrong-password", STRANGER).status_code == 401
    assert waits == [1, 2, 4, 5, 5]


def test_every_replica_sees_the_same_counters(settings: dict[str, str]) -> None:
    clock = Clock()
    replicas = [create_app(settings), create_app(settings)]
    for app in replicas:
        app.extensions["login_throttle"].clock = clock
    apis = [Api(app.test_client(), settings) for app in replicas]
    # Alternating between the two: one budget, not two.
    alternating = [login(apis[i % 2], ADMIN, "wrong-password", STRANGER).status_code for i in range(7)]
    assert alternating == [401] * 6 + [429]
    assert login(apis[0], ADMIN, "wrong-password", STRANGER).status_code == 429


def test_concurrent_guesses_cannot_slip_past_the_limit(app: Flask, api: Api, clock: Clock) -> None:
    """30 guesses at the same moment (threads on their own MySQL connections, as the workers
    of several replicas would be): exactly the free failures and one more are checked."""
    results: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(30)

    def guess() -> None:
        client = app.test_client()
        start.wait()
        response = client.post(
            "/api/auth/login",
            json={"username": ADMIN, "password": "wrong-password"},
            environ_base={"REMOTE_ADDR": STRANGER},
        )
        with lock:
            results.append(response.status_code)

    threads = [threading.Thread(target=guess) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert Counter(results) == {401: 6, 429: 24}


@pytest.mark.parametrize(
    ("hops", "forwarded_for", "peer"),
    [
        # No proxy in front: the header is anyone's to write, so it is not read.
        (0, "192.0.2.1", STRANGER),
        # Behind Kong: Kong appends the address it saw; what the client wrote before is ignored.
        (1, f"10.9.9.9, {STRANGER}", "10.0.5.3"),
        (1, STRANGER, "10.0.5.3"),
        (2, f"6.6.6.6, {STRANGER}, 10.0.0.2", "10.0.5.3"),
    ],
)
def test_the_client_address_behind_trusted_proxies(
    settings: dict[str, str], hops: int, forwarded_for: str, peer: str
) -> None:
    """Every case's client is STRANGER."""
    app = create_app({**settings, "TRUSTED_PROXY_HOPS": str(hops)})
    app.extensions["login_throttle"].clock = Clock()
    api = Api(app.test_client(), settings)
    for i in range(6):
        # A guesser rotating what it writes in X-Forwarded-For gains nothing.
        header = forwarded_for.replace("10.9.9.9", f"10.9.9.{i}").replace("6.6.6.6", f"6.6.6.{i}")
        assert login(api, ADMIN, "wrong-password", peer, **{"X-Forwarded-For": header}).status_code == 401
    blocked = login(api, ADMIN, "wrong-password", peer, **{"X-Forwarded-For": forwarded_for})
    assert blocked.status_code == 429
    # The same guesses did not count against another client address.
    other = forwarded_for.replace(STRANGER, "203.0.113.99") if hops else forwarded_for
    other_peer = peer if hops else "203.0.113.99"
    assert login(api, ADMIN, "wrong-password", other_peer, **{"X-Forwarded-For": other}).status_code == 401


@pytest.mark.parametrize(
    ("address", "client"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("unix-socket", "unix-socket"),
    ],
)
def test_an_ipv6_client_is_its_64_network(address: str, client: str) -> None:
    assert client_key(address) == client


def test_the_table_holds_no_typed_username_and_forgets_old_rows(api: Api, clock: Clock, sql: Sql) -> None:
    typed = "my-secret-passphrase-typed-as-username"
    statuses(api, typed, "x" * 8, STRANGER, 3)

    def rows() -> list[dict]:
        return sql("SELECT * FROM login_throttle")

    found = rows()
    assert sorted(r["scope"] for r in found) == ["address", "pair", "username"]
    assert {r["failures"] for r in found} == {3}
    # Keyed hashes: not even a plain hash of the typed name is there.
    plain = {hashlib.sha256(v.encode()).digest() for v in (typed, STRANGER, f"{typed}\0{STRANGER}")}
    assert all(len(r["subject"]) == 32 and r["subject"] not in plain for r in found)
    # A day later the next attempt deletes the expired rows.
    clock.advance(86400)
    login(api, "someone", "wrong-password", "192.0.2.77")
    assert {r["failures"] for r in rows()} == {1}
    assert len(rows()) == 3


def test_unknown_and_impossible_usernames_are_throttled_alike(api: Api, clock: Clock) -> None:
    """Whether a name exists, or could exist, changes nothing in how its guesses are treated."""
    for i, name in enumerate(["no-such-user", "admin ", "ADMIN", "\u202eadmin", "a" * 300]):
        assert statuses(api, name, "wrong-password", f"192.0.2.{i}", 7) == [401] * 6 + [429], name
