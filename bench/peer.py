"""The peer: the Kafka consumer people write in Python today, doing the same trivial work.

aiokafka, manual commit after each processed batch, an in-memory set of processed event ids
(deduplication that forgets on restart), a dead-letter topic for records that fail. Reads
`--records` records of `--topic` as group `--group`, then prints one JSON line:
{"records": n, "seconds": t} where t runs from the first record received to the commit after
the last one.
"""

import argparse
import asyncio
import json
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--records", type=int, required=True)
    a = p.parse_args()

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
    seen: set[str] = set()
    done = 0
    first = None
    try:
        while done < a.records:
            batches = await consumer.getmany(timeout_ms=200, max_records=1000)
            for _tp, records in batches.items():
                for r in records:
                    if first is None:
                        first = time.perf_counter()
                    try:
                        headers = dict(r.headers or [])
                        event_id = headers.get("event-id", b"").decode() or json.loads(r.value)["event_id"]
                        if event_id not in seen:
                            json.loads(r.value)  # the trivial work: decode the event
                            seen.add(event_id)
                    except Exception as e:  # noqa: BLE001 - a poison record goes to the DLQ
                        await producer.send_and_wait(a.topic + ".dlq", r.value, headers=[("error", str(e).encode())])
                    done += 1
            if batches:
                await consumer.commit()
        elapsed = time.perf_counter() - (first or time.perf_counter())
    finally:
        await consumer.stop()
        await producer.stop()
    print(json.dumps({"records": done, "seconds": elapsed}))


asyncio.run(main())
