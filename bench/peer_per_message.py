"""The peer that commits per message: the most common aiokafka consumer, which handles one
message and then awaits `consumer.commit()` before it takes the next.

The same arguments, trivial work (a set of seen event ids, a DLQ for records that fail) and
JSON output line as `bench/peer.py`, from which it takes them: {"records": n, "seconds": t,
"cpu_seconds": c}, where t runs from the first record received to the commit after the last
one and c is this process's user + system CPU time over the same window
(`resource.getrusage(RUSAGE_SELF)`).
"""

import asyncio

from peer import Window, handle, parse_args, report, start


async def main() -> None:
    a = parse_args()
    consumer, producer = await start(a)
    seen: set[str] = set()
    done = 0
    window = None
    try:
        async for r in consumer:
            window = window or Window()
            await handle(r, seen, producer, a.topic)
            await consumer.commit()
            done += 1
            if done >= a.records:
                break
        report(done, window)
    finally:
        await consumer.stop()
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(main())
