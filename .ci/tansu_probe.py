#!/usr/bin/env python3
"""Probe a Kafka-protocol broker (Tansu in CI) with librdkafka, the library the kasm host uses.

Run through `.ci/tansu.sh probe [--quick]` (which installs confluent-kafka, pinned to the
librdkafka version of the host's rdkafka-sys, and starts/stops a broker), or directly:

    target/ci/venv/bin/python .ci/tansu_probe.py --bootstrap 127.0.0.1:PORT [--quick]

Each check prints one line `PASS|FAIL|WARN|INFO <name>: <detail>` (WARN: works, but unlike
Apache Kafka); the exit status is 1 when a check the end-to-end tests depend on fails. `--quick` (CI smoke test, ~30 s) skips the join
timing matrix, the assignment-strategy matrix and the throughput run. `--json FILE` also writes
the results as JSON. Topics and groups get a random suffix, so runs can share a broker.

This is a probe tool only; confluent-kafka is not a dependency of kasm.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import struct
import sys
import time
import uuid

try:
    import confluent_kafka
    from confluent_kafka import (
        OFFSET_BEGINNING,
        TIMESTAMP_CREATE_TIME,
        Consumer,
        KafkaError,
        KafkaException,
        Producer,
        TopicPartition,
    )
    from confluent_kafka.admin import AdminClient, NewTopic
except ImportError:  # pragma: no cover
    sys.exit("confluent-kafka is not installed; run: .ci/tansu.sh probe")

RESULTS: list[dict] = []
RUN = uuid.uuid4().hex[:8]
ARGS: argparse.Namespace


def report(status: str, name: str, detail: str, critical: bool = False, **data) -> None:
    RESULTS.append({"status": status, "name": name, "detail": detail, "critical": critical, **data})
    print(f"{status:4} {name}: {detail}", flush=True)


def topic_name(tag: str) -> str:
    return f"probe-{tag}-{RUN}"


# ---------------------------------------------------------------------------------------------
# librdkafka log / error capture


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.records.append(f"{record.levelname} {record.getMessage()}")


CAPTURE = Capture()
RDK_LOGGER = logging.getLogger("librdkafka")
RDK_LOGGER.addHandler(CAPTURE)
RDK_LOGGER.setLevel(logging.DEBUG)
RDK_LOGGER.propagate = False
ERRORS: list[str] = []


def on_error(err: KafkaError) -> None:
    ERRORS.append(f"{err.name()}: {err.str()}")


def base(**extra) -> dict:
    conf = {
        "bootstrap.servers": ARGS.bootstrap,
        "client.id": f"kasm-probe-{RUN}",
        "logger": RDK_LOGGER,
        "error_cb": on_error,
    }
    conf.update(extra)
    return conf


def group_conf(group: str, **extra) -> dict:
    conf = base(
        **{
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "session.timeout.ms": ARGS.session_timeout_ms,
            "heartbeat.interval.ms": ARGS.heartbeat_interval_ms,
        }
    )
    conf.update(extra)
    return conf


# ---------------------------------------------------------------------------------------------
# helpers


def create_topic(admin: AdminClient, name: str, partitions: int = 4) -> None:
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    for f in futures.values():
        f.result(timeout=15)
    wait_topic(admin, name, partitions)


def wait_topic(admin: AdminClient, name: str, partitions: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        md = admin.list_topics(name, timeout=5).topics.get(name)
        if md is not None and md.error is None:
            n = len(md.partitions)
            if n >= partitions:
                return n
        time.sleep(0.2)
    return n


def produce_n(name: str, n: int, partitions: int = 4, **conf) -> int:
    """Produce n records spread round-robin over the partitions; returns delivery failures."""
    failures = []
    p = Producer(base(**conf))
    for i in range(n):
        p.produce(name, value=b"v%d" % i, key=b"k%d" % i, partition=i % partitions,
                  on_delivery=lambda err, msg: err and failures.append(err))
    p.flush(30)
    return len(failures)


def poll_until(consumers, cond, timeout: float, sink: list | None = None):
    """Poll each consumer (100 ms) until cond() is true; returns elapsed seconds or None.

    Records polled without a sink are dropped: pass one whenever records may arrive."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for c in consumers:
            m = c.poll(0.1)
            if m is not None and sink is not None:
                sink.append((c, m))
        if cond():
            return time.monotonic() - t0
    return None


def assigned(c: Consumer) -> set[int]:
    return {tp.partition for tp in c.assignment()}


# ---------------------------------------------------------------------------------------------
# checks


def check_versions() -> None:
    report("INFO", "versions",
           f"confluent-kafka {confluent_kafka.version()[0]}, librdkafka {confluent_kafka.libversion()[0]}",
           librdkafka=confluent_kafka.libversion()[0])


API_NAMES = {
    0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 8: "OffsetCommit", 9: "OffsetFetch",
    10: "FindCoordinator", 11: "JoinGroup", 12: "Heartbeat", 13: "LeaveGroup", 14: "SyncGroup",
    15: "DescribeGroups", 16: "ListGroups", 17: "SaslHandshake", 18: "ApiVersions",
    19: "CreateTopics", 20: "DeleteTopics", 21: "DeleteRecords", 22: "InitProducerId",
    23: "OffsetForLeaderEpoch", 24: "AddPartitionsToTxn", 25: "AddOffsetsToTxn", 26: "EndTxn",
    28: "TxnOffsetCommit", 32: "DescribeConfigs", 33: "AlterConfigs", 36: "SaslAuthenticate",
    37: "CreatePartitions", 42: "DeleteGroups", 44: "IncrementalAlterConfigs", 47: "OffsetDelete",
    60: "DescribeCluster", 68: "ConsumerGroupHeartbeat", 71: "GetTelemetrySubscriptions",
    72: "PushTelemetry",
}


def check_api_versions() -> None:
    """Raw ApiVersions v0 request: which APIs and versions the broker advertises."""
    host, port = ARGS.bootstrap.split(",")[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        client = b"kasm-probe"
        msg = struct.pack(">hhih", 18, 0, 7, len(client)) + client
        s.sendall(struct.pack(">i", len(msg)) + msg)
        buf = b""
        while len(buf) < 4 or len(buf) < 4 + struct.unpack(">i", buf[:4])[0]:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    body = buf[8:]
    err, n = struct.unpack(">hi", body[:6])
    apis = {}
    for i in range(n):
        k, lo, hi = struct.unpack(">hhh", body[6 + 6 * i: 12 + 6 * i])
        apis[k] = (lo, hi)
    wanted = [0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18, 19, 20, 22, 23, 24, 25, 26, 28, 32, 42, 68]
    parts = []
    for k in wanted:
        lo_hi = apis.get(k)
        parts.append(f"{API_NAMES.get(k, k)} {lo_hi[0]}-{lo_hi[1]}" if lo_hi else f"{API_NAMES.get(k, k)} MISSING")
    report("INFO", "api-versions", f"error={err}, {n} APIs; " + ", ".join(parts),
           apis={str(k): v for k, v in sorted(apis.items())})


def check_admin(admin: AdminClient) -> str:
    name = topic_name("admin")
    t0 = time.monotonic()
    try:
        futures = admin.create_topics([NewTopic(name, num_partitions=4, replication_factor=1)])
        for f in futures.values():
            f.result(timeout=15)
    except Exception as e:  # noqa: BLE001
        report("FAIL", "admin.create_topics", f"{e!r}", critical=True)
        return ""
    dt = time.monotonic() - t0
    n = wait_topic(admin, name, 4)
    md = admin.list_topics(name, timeout=5).topics[name]
    leaders = sorted({p.leader for p in md.partitions.values()})
    report("PASS" if n == 4 else "FAIL", "admin.create_topics",
           f"num_partitions=4 created in {dt * 1000:.0f} ms; list_topics shows {n} partitions "
           f"{sorted(md.partitions)}, leaders {leaders}, replicas "
           f"{sorted({tuple(p.replicas) for p in md.partitions.values()})}", critical=True)

    # Creating it again: Apache Kafka answers TOPIC_ALREADY_EXISTS.
    try:
        for f in admin.create_topics([NewTopic(name, num_partitions=4, replication_factor=1)]).values():
            f.result(timeout=15)
        report("INFO", "admin.create_topics.duplicate", "no error (Kafka: TOPIC_ALREADY_EXISTS)")
    except KafkaException as e:
        report("INFO", "admin.create_topics.duplicate", f"{e.args[0].name()}")

    # replication_factor=-1 (broker default), as some tools send
    rf = topic_name("admin-rf")
    try:
        for f in admin.create_topics([NewTopic(rf, num_partitions=2)]).values():
            f.result(timeout=15)
        report("INFO", "admin.create_topics.default_rf", "replication_factor=-1 accepted")
    except Exception as e:  # noqa: BLE001
        report("INFO", "admin.create_topics.default_rf", f"{e!r}")

    # delete_topics (useful for test cleanup)
    throwaway = topic_name("delete")
    try:
        create_topic(admin, throwaway, 1)
        for f in admin.delete_topics([throwaway], operation_timeout=10).values():
            f.result(timeout=15)
        time.sleep(0.3)
        md = admin.list_topics(timeout=5).topics
        report("PASS" if throwaway not in md else "FAIL", "admin.delete_topics",
               "deleted and gone from metadata" if throwaway not in md else "still listed after delete")
    except Exception as e:  # noqa: BLE001
        report("FAIL", "admin.delete_topics", f"{e!r}")

    # describe_configs (broker's topic configuration)
    try:
        from confluent_kafka.admin import ConfigResource
        res = ConfigResource(ConfigResource.Type.TOPIC, name)
        cfg = admin.describe_configs([res])[res].result(timeout=10)
        report("INFO", "admin.describe_configs", f"{len(cfg)} entries")
    except Exception as e:  # noqa: BLE001
        report("INFO", "admin.describe_configs", f"{e!r}")
    return name


def topic_exists(admin: AdminClient, name: str) -> bool:
    """All-topics metadata request (never auto-creates, unlike list_topics(name))."""
    return name in admin.list_topics(timeout=5).topics


def check_autocreate(admin: AdminClient) -> None:
    # produce to a topic that does not exist (producer allow.auto.create.topics defaults to true)
    name = topic_name("auto-produce")
    errs = []
    p = Producer(base())
    t0 = time.monotonic()
    p.produce(name, b"x", on_delivery=lambda err, msg: errs.append(err))
    p.flush(20)
    dt = time.monotonic() - t0
    exists = topic_exists(admin, name)
    n = len(admin.list_topics(name, timeout=5).topics[name].partitions) if exists else 0
    ok = errs == [None] and exists
    report("PASS" if ok else "FAIL", "autocreate.produce",
           f"delivery={errs}, after {dt * 1000:.0f} ms; topic created with {n} partitions")

    # metadata request for one unknown topic from a producer-type client (AdminClient)
    name = topic_name("auto-md")
    md = admin.list_topics(name, timeout=5).topics.get(name)
    report("INFO", "autocreate.list_topics(name)",
           f"AdminClient.list_topics(unknown topic) -> created={topic_exists(admin, name)}, "
           f"{len(md.partitions) if md is not None else 0} partitions, error={md.error if md is not None else None}")

    # subscribe to a topic that does not exist
    variants = [
        ("allow.auto.create.topics=true", {"allow.auto.create.topics": True}),
        ("allow.auto.create.topics=true+topic.metadata.refresh.interval.ms=1000",
         {"allow.auto.create.topics": True, "topic.metadata.refresh.interval.ms": 1000}),
        ("default (allow.auto.create.topics=false)", {}),
    ]
    for label, extra in variants[:1] if ARGS.quick else variants:
        name = topic_name("auto-sub")
        c = Consumer(group_conf(f"probe-auto-{uuid.uuid4().hex[:6]}", **extra))
        c.subscribe([name])
        seen = []
        created = poll_until([c], lambda name=name: topic_exists(admin, name), 5, seen)
        c.close()
        errs = sorted({m.error().name() for _, m in seen if m.error()})
        report("INFO", f"autocreate.subscribe {label}",
               (f"topic created after {created:.2f} s" if created is not None else
                "topic NOT created within 5 s") + f"; consumer errors {errs}")


def check_producers(admin: AdminClient) -> None:
    name = topic_name("idem")
    create_topic(admin, name)
    for label, conf in [
        ("acks=all+enable.idempotence=true", {"acks": "all", "enable.idempotence": True}),
        ("acks=all", {"acks": "all", "enable.idempotence": False}),
        ("acks=1", {"acks": "1"}),
    ]:
        before = len(ERRORS)
        errs = []
        p = Producer(base(**conf))
        t0 = time.monotonic()
        for i in range(100):
            p.produce(name, b"v%d" % i, key=b"k%d" % i, on_delivery=lambda err, msg, errs=errs: errs.append(err))
        left = p.flush(20)
        dt = time.monotonic() - t0
        bad = [e for e in errs if e is not None]
        fatal = ERRORS[before:]
        ok = left == 0 and len(errs) == 100 and not bad and not fatal
        report("PASS" if ok else "FAIL", f"producer {label}",
               f"100 records delivered in {dt * 1000:.0f} ms" if ok else
               f"undelivered={left}, errors={[e.name() for e in bad][:3]}, error_cb={fatal[:3]}",
               critical=label.startswith("acks=all"))

    # count what is on the topic after the three runs (consume it all)
    c = Consumer(group_conf(f"probe-count-{RUN}"))
    c.assign([TopicPartition(name, part, OFFSET_BEGINNING) for part in range(4)])
    got = []
    poll_until([c], lambda: len(got) >= 300, 15, _Sink(got))
    poll_until([c], lambda: False, 0.5, _Sink(got))
    c.close()
    report("PASS" if len(got) == 300 else "FAIL", "producer.total",
           f"{len(got)} records on the topic (expected 300)", critical=True)

    # transactions (not needed by kasm, recorded for completeness)
    try:
        p = Producer(base(**{"transactional.id": f"probe-tx-{RUN}"}))
        p.init_transactions(10)
        p.begin_transaction()
        p.produce(name, b"tx", partition=0)
        p.commit_transaction(10)
        report("INFO", "producer.transactions", "init/begin/produce/commit ok")
    except Exception as e:  # noqa: BLE001
        report("INFO", "producer.transactions", f"{e!r}")


def check_roundtrip(admin: AdminClient) -> None:
    name = topic_name("roundtrip")
    create_topic(admin, name, 1)
    ts = 1_700_000_000_123
    big = os.urandom(200_000)
    sent = [
        dict(key=b"key-1", value=b"value-1", headers=[("h1", b"a"), ("h2", b"\x00\xff"), ("h1", b"dup")], timestamp=ts),
        dict(key=None, value=b"no-key", headers=[("null-value", None), ("empty", b"")]),
        dict(key=b"tombstone", value=None),
        dict(key=b"", value=b""),
        dict(key=b"big", value=big),
    ]
    p = Producer(base(**{"acks": "all"}))
    errs = []
    t_before = int(time.time() * 1000)
    for rec in sent:
        p.produce(name, partition=0, on_delivery=lambda err, msg: errs.append(err), **rec)
    p.flush(20)
    t_after = int(time.time() * 1000)
    c = Consumer(group_conf(f"probe-rt-{RUN}"))
    c.assign([TopicPartition(name, 0, OFFSET_BEGINNING)])
    got = []
    poll_until([c], lambda: len(got) >= len(sent), 15,
               sink=_Sink(got))
    c.close()
    problems = []
    if errs != [None] * len(sent):
        problems.append(f"delivery {errs}")
    if len(got) != len(sent):
        problems.append(f"got {len(got)} of {len(sent)} records")
    for i, (rec, m) in enumerate(zip(sent, got)):
        if m.key() != rec["key"]:
            problems.append(f"#{i} key {m.key()!r} != {rec['key']!r}")
        if m.value() != rec["value"]:
            problems.append(f"#{i} value differs (len {len(m.value() or b'')} vs {len(rec['value'] or b'')})")
        want_h = rec.get("headers")
        got_h = m.headers()
        if (want_h or None) != (got_h or None):
            problems.append(f"#{i} headers {got_h!r} != {want_h!r}")
        tstype, tsval = m.timestamp()
        if "timestamp" in rec:
            if (tstype, tsval) != (TIMESTAMP_CREATE_TIME, rec["timestamp"]):
                problems.append(f"#{i} timestamp {(tstype, tsval)} != (CreateTime, {rec['timestamp']})")
        elif tstype != TIMESTAMP_CREATE_TIME or not (t_before - 1000 <= tsval <= t_after + 1000):
            problems.append(f"#{i} default timestamp {(tstype, tsval)} not CreateTime/now")
        if m.offset() != i:
            problems.append(f"#{i} offset {m.offset()}")
    report("PASS" if not problems else "FAIL", "roundtrip keys/values/headers/timestamps",
           "keys (incl. null, empty), values (incl. null tombstone, empty, 200 kB), headers "
           "(order, duplicate names, null and empty values, binary), explicit and default "
           "CreateTime timestamps, offsets 0..4 all round-trip" if not problems else "; ".join(problems[:6]),
           critical=True)


class _Sink(list):
    """poll_until sink that keeps only good messages in the given list."""

    def __init__(self, target: list) -> None:
        super().__init__()
        self.target = target

    def append(self, item) -> None:  # type: ignore[override]
        _, m = item
        if m.error() is None:
            self.target.append(m)


def check_group_resume(admin: AdminClient) -> None:
    name = topic_name("group")
    create_topic(admin, name)
    n, per_part = 40, 10
    assert produce_n(name, n) == 0
    group = f"probe-group-{RUN}"
    # commit through offset 4 on partitions 0-1 and offset 6 on 2-3 (next offsets 5 and 7)
    commit_upto = {0: 5, 1: 5, 2: 7, 3: 7}

    # first consumer: read everything, store only the records below commit_upto, commit sync
    c1 = Consumer(group_conf(group))
    c1.subscribe([name])
    got1 = []
    t_assign = poll_until([c1], lambda: len(assigned(c1)) == 4, 60, _Sink(got1))
    if t_assign is None:
        c1.close()
        report("FAIL", "group.first-join", "no assignment within 60 s", critical=True)
        return
    t_first = 0.0 if got1 else poll_until([c1], lambda: len(got1) > 0, 30, _Sink(got1))
    poll_until([c1], lambda: len(got1) >= n, 30, _Sink(got1))
    for m in got1:
        if m.offset() < commit_upto[m.partition()]:
            c1.store_offsets(message=m)
    t0 = time.monotonic()
    commit_res = c1.commit(asynchronous=False)
    commit_ms = (time.monotonic() - t0) * 1000
    commit_errs = [tp.error for tp in commit_res or [] if tp.error]
    tps = [TopicPartition(name, p) for p in range(4)]
    committed = {tp.partition: tp.offset for tp in c1.committed(tps, timeout=10)}
    wm = [c1.get_watermark_offsets(TopicPartition(name, p), timeout=5) for p in range(4)]
    wm_cached = [c1.get_watermark_offsets(TopicPartition(name, p), cached=True) for p in range(4)]
    pos = {tp.partition: tp.offset for tp in c1.position(tps)}
    t_close = time.monotonic()
    c1.close()
    close_s = time.monotonic() - t_close
    report("INFO", "group.first-join",
           f"subscribe -> assignment of 4 partitions {t_assign:.2f} s, -> first record "
           f"{t_assign + (t_first or 0):.2f} s (session.timeout.ms={ARGS.session_timeout_ms}); "
           f"close() {close_s:.2f} s", join_s=t_assign)
    ok_commit = not commit_errs and committed == commit_upto and len(got1) == n
    report("PASS" if ok_commit else "FAIL", "group.commit+committed()",
           f"read {len(got1)}, store_offsets x{sum(commit_upto.values())} + commit(asynchronous=False) "
           f"in {commit_ms:.0f} ms -> committed() {committed}"
           + ("" if ok_commit else f", expected {commit_upto}; commit errors {commit_errs}"), critical=True)
    ok_cached = [h for _, h in wm_cached] == [per_part] * 4
    report("PASS" if ok_cached else "FAIL", "get_watermark_offsets(cached=True)",
           f"(low, high) from fetch responses {wm_cached}; position() {pos}", critical=True)
    ok_wm = wm == [(0, per_part)] * 4
    report("PASS" if ok_wm else "WARN", "get_watermark_offsets (ListOffsets query)",
           f"(low, high) {wm}, expected {[(0, per_part)] * 4}"
           + ("" if ok_wm else " - Tansu's ListOffsets(LATEST) answers the base offset of the "
              "newest batch + 1, not the log end offset (wrong whenever that batch has >1 record)"))

    # second consumer, same group, after the first closed: must resume at the committed offsets
    c2 = Consumer(group_conf(group))
    c2.subscribe([name])
    got2 = []
    t_assign2 = poll_until([c2], lambda: len(assigned(c2)) == 4, 60, _Sink(got2))
    want = n - sum(commit_upto.values())
    poll_until([c2], lambda: len(got2) >= want, 30, _Sink(got2))
    poll_until([c2], lambda: False, 1, _Sink(got2))  # anything extra (duplicates)?
    c2.close()
    first2 = {}
    for m in got2:
        first2.setdefault(m.partition(), m.offset())
    offs2 = sorted((m.partition(), m.offset()) for m in got2)
    expect2 = sorted((p, o) for p in range(4) for o in range(commit_upto[p], per_part))
    ok = offs2 == expect2
    report("PASS" if ok else "FAIL", "group.resume-after-restart",
           f"second consumer (same group): assignment after {t_assign2 or -1:.2f} s, first offsets "
           f"{dict(sorted(first2.items()))} (committed {commit_upto}), {len(got2)} records "
           f"(expected exactly offsets committed..9 = {len(expect2)})", critical=True)


def check_offset_reset_latest(admin: AdminClient) -> None:
    """New group with auto.offset.reset=latest: Kafka delivers only records produced later."""
    name = topic_name("latest")
    create_topic(admin, name, 1)
    assert produce_n(name, 10, partitions=1) == 0  # one batch of 10 records
    c = Consumer(group_conf(f"probe-latest-{RUN}", **{"auto.offset.reset": "latest"}))
    c.subscribe([name])
    got = []
    poll_until([c], lambda: len(assigned(c)) == 1, 60, _Sink(got))
    poll_until([c], lambda: False, 2, _Sink(got))
    old = [m.offset() for m in got]
    p = Producer(base())
    p.produce(name, b"new", partition=0)
    p.flush(10)
    poll_until([c], lambda: any(m.value() == b"new" for m in got), 10, _Sink(got))
    c.close()
    new = [m.offset() for m in got if m.value() == b"new"]
    ok = not old and new == [10]
    report("PASS" if ok else "WARN", "auto.offset.reset=latest",
           f"records from before the subscription delivered: offsets {old}; new record at {new}"
           + ("" if ok else " - follows from the ListOffsets(LATEST) answer above"))

    # offsets_for_times: first offset with timestamp >= T
    c = Consumer(group_conf(f"probe-oft-{RUN}"))
    try:
        res = c.offsets_for_times([TopicPartition(name, 0, 0)], timeout=10)
        report("INFO", "offsets_for_times(ts=0)", f"-> offset {res[0].offset} (Kafka: 0), error {res[0].error}")
    except Exception as e:  # noqa: BLE001
        report("INFO", "offsets_for_times(ts=0)", repr(e))
    c.close()


def check_rebalance_delay_setting() -> None:
    try:
        Consumer(group_conf(f"probe-x-{RUN}", **{"group.initial.rebalance.delay.ms": 0})).close()
        report("INFO", "group.initial.rebalance.delay.ms", "accepted by librdkafka (unexpected)")
    except KafkaException as e:
        report("INFO", "group.initial.rebalance.delay.ms",
               f"client-side: {e.args[0].str()} — it is a broker setting; Tansu has no such option "
               "(its JoinGroup holds each join ~session.timeout.ms/2 instead)")


def join_time(name: str, strategy: str | None, **extra) -> tuple[float | None, int]:
    conf = group_conf(f"probe-join-{uuid.uuid4().hex[:6]}", **extra)
    if strategy:
        conf["partition.assignment.strategy"] = strategy
    c = Consumer(conf)
    c.subscribe([name])
    got = []
    t = poll_until([c], lambda: len(assigned(c)) == 4, 60, _Sink(got))
    if t is not None:
        poll_until([c], lambda: len(got) >= 40, 15, _Sink(got))
    c.close()
    return t, len(got)


def check_strategies(admin: AdminClient) -> None:
    name = topic_name("strategy")
    create_topic(admin, name)
    assert produce_n(name, 40) == 0
    for strategy in ["range", "roundrobin", "cooperative-sticky", "range,roundrobin"]:
        t, count = join_time(name, strategy)
        ok = t is not None and count == 40
        report("PASS" if ok else "FAIL", f"strategy {strategy}",
               f"4 partitions assigned after {t:.2f} s, consumed {count}/40" if t is not None
               else "no full assignment within 60 s", critical=strategy == "range")


def check_join_matrix(admin: AdminClient) -> None:
    name = topic_name("joinmatrix")
    create_topic(admin, name)
    assert produce_n(name, 40) == 0
    rows = []
    for st, hb in [(45000, 3000), (10000, 3000), (6000, 1000), (3000, 1000), (2000, 500)]:
        t, _ = join_time(name, None, **{"session.timeout.ms": st, "heartbeat.interval.ms": hb})
        rows.append(f"session.timeout.ms={st}: {t:.2f} s" if t is not None else f"{st}: none")
    report("INFO", "group.join-time-vs-session.timeout.ms", "; ".join(rows))


def check_two_consumers(admin: AdminClient, strategy: str) -> None:
    name = topic_name("two-" + strategy.replace(",", "_"))
    create_topic(admin, name)
    group = f"probe-two-{uuid.uuid4().hex[:6]}"
    conf = {"partition.assignment.strategy": strategy}
    a = Consumer(group_conf(group, **conf))
    a.subscribe([name])
    t_a = poll_until([a], lambda: len(assigned(a)) == 4, 60)
    b = Consumer(group_conf(group, **conf))
    b.subscribe([name])

    def split() -> bool:
        sa, sb = assigned(a), assigned(b)
        return bool(sa) and bool(sb) and not (sa & sb) and len(sa | sb) == 4

    t_split = poll_until([a, b], split, 90)
    sa, sb = sorted(assigned(a)), sorted(assigned(b))
    # records produced now must reach both members
    got = []
    produce_n(name, 40)
    poll_until([a, b], lambda: len(got) >= 40, 20, _SinkBoth(got))
    per = {"a": sum(1 for c, _ in got if c is a), "b": sum(1 for c, _ in got if c is b)}
    # the second member leaves: the first should get all four back
    b.close()
    t_back = poll_until([a], lambda: len(assigned(a)) == 4, 90)
    a.close()
    ok = t_split is not None and per["a"] > 0 and per["b"] > 0 and len(got) == 40
    report("PASS" if ok else "FAIL", f"two-consumers {strategy}",
           f"first alone after {t_a or -1:.2f} s; after the second subscribed, split "
           f"{sa}/{sb} after {t_split if t_split is not None else -1:.2f} s; 40 new records consumed "
           f"{per['a']}/{per['b']}; second closed -> first has all 4 after "
           f"{t_back if t_back is not None else -1:.2f} s", critical=strategy == "range",
           rebalance_s=t_split, leave_s=t_back)


class _SinkBoth(list):
    def __init__(self, target: list) -> None:
        super().__init__()
        self.target = target

    def append(self, item) -> None:  # type: ignore[override]
        c, m = item
        if m.error() is None:
            self.target.append((c, m))


def check_pause_resume(admin: AdminClient) -> None:
    name = topic_name("pause")
    create_topic(admin, name, 2)
    c = Consumer(group_conf(f"probe-pause-{RUN}"))
    c.assign([TopicPartition(name, 0, OFFSET_BEGINNING), TopicPartition(name, 1, OFFSET_BEGINNING)])
    poll_until([c], lambda: False, 1)
    c.pause([TopicPartition(name, 0)])
    assert produce_n(name, 20, partitions=2) == 0
    got = []
    poll_until([c], lambda: False, 3, _Sink(got))
    while_paused = sorted({m.partition() for m in got})
    n_paused = len(got)
    c.resume([TopicPartition(name, 0)])
    t = poll_until([c], lambda: len(got) >= 20, 10, _Sink(got))
    c.close()
    ok = while_paused == [1] and n_paused == 10 and len(got) == 20
    report("PASS" if ok else "FAIL", "pause/resume",
           f"while partition 0 paused: {n_paused} records from partitions {while_paused}; after resume "
           f"all 20 after {t if t is not None else -1:.2f} s", critical=True)


def check_latency(admin: AdminClient) -> None:
    """Produce -> consume latency for a caught-up, idle consumer (is a long-poll Fetch woken?)."""
    name = topic_name("latency")
    create_topic(admin, name, 1)
    p = Producer(base(**{"linger.ms": 0}))
    rows = []
    for wait_ms in (500, 100):
        c = Consumer(group_conf(f"probe-lat-{RUN}", **{"fetch.wait.max.ms": wait_ms}))
        c.assign([TopicPartition(name, 0, OFFSET_BEGINNING)])
        poll_until([c], lambda: False, 1.5, [])
        lat = []
        for i in range(8):
            time.sleep(0.13)
            t0 = time.monotonic()
            p.produce(name, b"t%d" % i, partition=0)
            p.flush(5)
            got = []
            while not got and time.monotonic() - t0 < 5:
                m = c.poll(0.005)
                if m is not None and m.error() is None:
                    got.append(m)
            lat.append((time.monotonic() - t0) * 1000)
        c.close()
        lat.sort()
        rows.append(f"fetch.wait.max.ms={wait_ms}: median {lat[len(lat) // 2]:.0f} ms, max {lat[-1]:.0f} ms")
    report("INFO", "latency produce->consume (idle consumer)", "; ".join(rows))


def check_throughput(admin: AdminClient) -> None:
    name = topic_name("perf")
    create_topic(admin, name)
    n = ARGS.perf_messages
    payload = b"x" * 100
    fails = []
    p = Producer(base(**{"acks": "all", "linger.ms": 5}))
    t0 = time.monotonic()
    for i in range(n):
        while True:
            try:
                p.produce(name, payload, partition=i % 4, on_delivery=lambda err, msg: err and fails.append(err))
                break
            except BufferError:
                p.poll(0.05)
        if i % 1000 == 0:
            p.poll(0)
    p.flush(120)
    dt_p = time.monotonic() - t0
    c = Consumer(group_conf(f"probe-perf-{RUN}"))
    c.assign([TopicPartition(name, part, OFFSET_BEGINNING) for part in range(4)])
    t0 = time.monotonic()
    t_first = None
    count = 0
    while count < n and time.monotonic() - t0 < 120:
        for m in c.consume(1000, 1.0):
            if m.error() is None:
                count += 1
        if count and t_first is None:
            t_first = time.monotonic()
    t_end = time.monotonic()
    c.close()
    dt_c = t_end - t0
    steady = (t_end - t_first) if t_first else 0.0
    ok = not fails and count == n
    report("PASS" if ok else "FAIL", "throughput",
           f"{n} x 100 B, 4 partitions: produce (acks=all, linger.ms=5) {dt_p:.2f} s = {n / dt_p:,.0f} msg/s; "
           f"consume (assign, no group, Python loop) {count} in {dt_c:.2f} s = {count / dt_c:,.0f} msg/s "
           f"({t_first - t0 if t_first else -1:.2f} s to the first batch, then "
           f"{(count - 1000) / steady if steady > 0 else 0:,.0f} msg/s); delivery failures {len(fails)}",
           produce_rate=n / dt_p, consume_rate=count / dt_c)


def check_logs(log_offset: int) -> None:
    uniq = sorted(set(CAPTURE.records))
    report("INFO", "librdkafka warnings", f"{len(CAPTURE.records)} ({len(uniq)} distinct): "
           + (" | ".join(uniq[:8]) if uniq else "none"))
    report("INFO", "error_cb", f"{len(ERRORS)}: " + (" | ".join(sorted(set(ERRORS))[:8]) if ERRORS else "none"))
    if ARGS.broker_log and os.path.exists(ARGS.broker_log):
        with open(ARGS.broker_log, "rb") as f:
            f.seek(log_offset)
            lines = [ln.decode(errors="replace").rstrip() for ln in f]
        interesting = [ln for ln in lines if ln and not ln.startswith("==")]
        report("INFO", "broker log", f"{len(interesting)} lines during the probe"
               + (": " + " | ".join(interesting[:8]) if interesting else ""))


def main() -> int:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    ap.add_argument("--quick", action="store_true", help="skip the slow parts (CI smoke test)")
    ap.add_argument("--session-timeout-ms", type=int, default=6000)
    ap.add_argument("--heartbeat-interval-ms", type=int, default=1000)
    ap.add_argument("--perf-messages", type=int, default=100_000)
    ap.add_argument("--broker-log", help="broker log file to scan for lines written during the probe")
    ap.add_argument("--json", help="write results as JSON to this file")
    ARGS = ap.parse_args()
    if not ARGS.bootstrap:
        ap.error("--bootstrap or KAFKA_BOOTSTRAP_SERVERS is required")
    log_offset = os.path.getsize(ARGS.broker_log) if ARGS.broker_log and os.path.exists(ARGS.broker_log) else 0

    t_start = time.monotonic()
    print(f"probing {ARGS.bootstrap} (run {RUN}, session.timeout.ms={ARGS.session_timeout_ms}, "
          f"heartbeat.interval.ms={ARGS.heartbeat_interval_ms})", flush=True)
    check_versions()
    check_api_versions()
    admin = AdminClient(base())
    steps = [
        ("admin", lambda: check_admin(admin)),
        ("autocreate", lambda: check_autocreate(admin)),
        ("producers", lambda: check_producers(admin)),
        ("roundtrip", lambda: check_roundtrip(admin)),
        ("group-resume", lambda: check_group_resume(admin)),
        ("offset-reset-latest", lambda: check_offset_reset_latest(admin)),
        ("rebalance-delay-setting", check_rebalance_delay_setting),
        ("two-consumers range", lambda: check_two_consumers(admin, "range")),
        ("pause-resume", lambda: check_pause_resume(admin)),
    ]
    if not ARGS.quick:
        steps += [
            ("strategies", lambda: check_strategies(admin)),
            ("two-consumers cooperative-sticky", lambda: check_two_consumers(admin, "cooperative-sticky")),
            ("join-matrix", lambda: check_join_matrix(admin)),
            ("latency", lambda: check_latency(admin)),
            ("throughput", lambda: check_throughput(admin)),
        ]
    for name, step in steps:
        try:
            step()
        except Exception as e:  # noqa: BLE001 - a probe reports, it does not stop
            report("FAIL", f"exception in {name}", repr(e), critical=True)
    check_logs(log_offset)
    failed = [r for r in RESULTS if r["status"] == "FAIL"]
    critical = [r for r in failed if r["critical"]]
    print(f"probe finished in {time.monotonic() - t_start:.1f} s: "
          f"{sum(r['status'] == 'PASS' for r in RESULTS)} PASS, "
          f"{sum(r['status'] == 'WARN' for r in RESULTS)} WARN (unlike Apache Kafka), "
          f"{len(failed)} FAIL ({len(critical)} that kasm relies on)", flush=True)
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump(RESULTS, f, indent=2, default=str)
    return 1 if critical else 0


if __name__ == "__main__":
    sys.exit(main())
