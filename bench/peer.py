"""The peer that commits per batch: the Kafka consumer people write in Python today, doing the
same trivial work as kasm's fixture handler.

aiokafka, manual commit after each batch `getmany` returns, an in-memory set of processed event
ids (deduplication that forgets on restart), a dead-letter topic for records that fail. Reads
`--records` records of `--topic` as group `--group`, then prints one JSON line:
{"records": n, "seconds": t, "cpu_seconds": c}, where t runs from the first record received to
the commit after the last one and c is the user + system CPU time this process used over the
same window (`resource.getrusage(RUSAGE_SELF)`: every thread of the interpreter, not the
broker's work).

`bench/peer_per_message.py` takes its arguments, per-record work, window and output line from
here, so the two peers differ only in when they commit.
"""

import argparse
import asyncio
import json
import resource
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--records", type=int, required=True)
    return p.parse_args()


async def start(a: argparse.Namespace) -> tuple[AIOKafkaConsumer, AIOKafkaProducer]:
    """A started consumer of `--topic` (manual commits) and a producer for the DLQ."""
    consumer = AIOKafkaConsumer(
        a.topic,
        bootstrap_servers=a.bootstrap,
        group_id=a.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=a.bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    return consumer, producer


async def handle(r: ConsumerRecord, seen: set[str], producer: AIOKafkaProducer, topic: str) -> None:
    """The trivial work: skip an event id already seen, else decode the event."""
    try:
        headers = dict(r.headers or [])
        event_id = headers.get("event-id", b"").decode() or json.loads(r.value)["event_id"]
        if event_id not in seen:
            json.loads(r.value)
            seen.add(event_id)
    except Exception as e:  # noqa: BLE001 - a poison record goes to the DLQ
        await producer.send_and_wait(topic + ".dlq", r.value, headers=[("error", str(e).encode())])


def cpu_seconds() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


class Window:
    """The measured window: opened at the first record, closed after the last commit."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = cpu_seconds()

    def close(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds) since the window opened."""
        return time.perf_counter() - self.wall, cpu_seconds() - self.cpu


def report(records: int, window: Window | None) -> None:
    seconds, cpu = window.close() if window else (0.0, 0.0)
    print(json.dumps({"records": records, "seconds": seconds, "cpu_seconds": cpu}))


async def main() -> None:
    a = parse_args()
    consumer, producer = await start(a)
    seen: set[str] = set()
    done = 0
    window = None
    try:
        while done < a.records:
            batches = await consumer.getmany(timeout_ms=200, max_records=1000)
            for records in batches.values():
                for r in records:
                    window = window or Window()
                    await handle(r, seen, producer, a.topic)
                    done += 1
            if batches:
                await consumer.commit()
        report(done, window)
    finally:
        await consumer.stop()
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(main())
