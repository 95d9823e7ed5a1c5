"""Several adapter replicas sharing one MQTT 5 shared subscription ($share/<group>/#)."""

from __future__ import annotations

from collections.abc import Callable

from tests.adapter.test_delivery import FIELDS, RATE, N, Stream, message, wait_mid_stream, wait_stored
from tests.mqtt_client import Publisher
from tests.servers import AdapterProcess, InfluxServer, MosquittoServer

SHARED = "$share/adapters/#"


def replicas(
    make_adapter: Callable[..., AdapterProcess],
    broker: MosquittoServer,
    influx: InfluxServer,
    database: str,
    n: int = 2,
) -> list[AdapterProcess]:
    # As in stack.yml: one persistent session per Swarm task slot.
    return [
        make_adapter(broker, influx, database, MQTT_TOPIC=SHARED, MQTT_CLIENT_ID=f"adapter-{slot}")
        for slot in range(1, n + 1)
    ]


def test_each_message_is_handled_by_exactly_one_replica(
    broker: MosquittoServer,
    influx: InfluxServer,
    database: str,
    make_adapter: Callable[..., AdapterProcess],
) -> None:
    adapters = replicas(make_adapter, broker, influx, database)
    pub = Publisher(broker.port)
    pub.publish_all(message(i) for i in range(6000))
    pub.wait()
    pub.close()
    wait_stored(influx, database, 6000 * FIELDS, 60)
    received = [a.metric("adapter_messages_received_total") for a in adapters]
    written = [a.metric("adapter_points_written_total") for a in adapters]
    # Shared, not duplicated: together they saw every message once, and both took part.
    assert sum(received) == 6000
    assert sum(written) == 6000 * FIELDS
    assert all(r > 0 for r in received)


def test_killing_one_replica_mid_stream_loses_nothing(
    broker: MosquittoServer,
    influx: InfluxServer,
    database: str,
    make_adapter: Callable[..., AdapterProcess],
) -> None:
    first, second = replicas(make_adapter, broker, influx, database)
    stream = Stream(broker, N, RATE).start()
    wait_mid_stream(influx, database)
    first.kill()
    killed_at = stream.sent
    # Swarm restarts a failed task in the same slot, i.e. with the same client id and session.
    first.start()
    stream.finish()
    assert 0 < killed_at < N
    wait_stored(influx, database, N * FIELDS)
    assert second.proc is not None and second.proc.poll() is None
