"""The SDK's logic, natively (no component): python -m unittest discover guest-sdk-python/tests"""

import json
import re
import tempfile
import unittest
from pathlib import Path

from kasm_guest import CapabilityError, Event, Fatal, HandlerError, Retryable, kv, log, publish
from kasm_guest import build, world
from kasm_guest.taskapp import Instant, Reminder, TaskEvent

REPO_WIT = Path(__file__).resolve().parents[2] / "wit"


def sample() -> Event:
    return Event(
        "e-1",
        "orders",
        b'{"order_id":"o-7","amount":3}',
        key="user-1",
        headers=[("trace", "a"), ("bin", b"\xff\xfe"), ("trace", "b")],
        partition=4,
        offset=42,
        timestamp_ms=1_700_000_000_123,
        attempt=2,
    )


class EventTest(unittest.TestCase):
    def test_accessors_return_what_was_set(self):
        event = sample()
        self.assertEqual((event.id, event.topic, event.partition, event.offset), ("e-1", "orders", 4, 42))
        self.assertEqual(event.key, b"user-1")
        self.assertEqual(event.key_str, "user-1")
        self.assertEqual(event.attempt, 2)
        self.assertEqual(event.timestamp.isoformat(), "2023-11-14T22:13:20.123000+00:00")

    def test_header_returns_the_last_of_a_repeated_name(self):
        event = sample()
        self.assertEqual(event.header("trace"), b"b")
        self.assertEqual(event.header_str("bin"), None)
        self.assertEqual(event.header("Trace"), None)
        self.assertEqual(len(event.headers), 3)

    def test_json_decodes_or_is_fatal(self):
        self.assertEqual(sample().json(), {"order_id": "o-7", "amount": 3})
        with self.assertRaises(Fatal) as caught:
            Event("e", "t", b"{nope").json()
        self.assertTrue(caught.exception.message.startswith("undecodable payload: "))

    def test_defaults(self):
        event = Event("e", "t")
        self.assertEqual((event.partition, event.offset, event.key, event.headers), (0, 0, None, []))
        self.assertEqual((event.payload, event.timestamp_ms, event.attempt), (b"", None, 1))


class ErrorsTest(unittest.TestCase):
    def test_cases(self):
        self.assertEqual(str(Retryable("busy")), "retryable: busy")
        self.assertEqual(str(Fatal("bad")), "fatal: bad")
        self.assertIsInstance(Fatal("x"), HandlerError)

    def test_capabilities_outside_a_component_say_so(self):
        for call in (lambda: publish("t", b"x"), lambda: kv.get("k"), lambda: log.info("x")):
            with self.assertRaises(CapabilityError) as caught:
                call()
            self.assertIn("only inside a kasm component", str(caught.exception))


class WorldTest(unittest.TestCase):
    def handler_wit(self) -> str:
        return (REPO_WIT / "handler.wit").read_text()

    def imports(self, text: str) -> list[str]:
        return re.findall(r"^\s*import ([^;]+);", text, re.M)

    def test_a_producer_handler_imports_producer_settings_and_log_only(self):
        caps = world.normalize(["producer"])
        self.assertEqual(caps, ["producer", "settings", "log"])
        self.assertEqual(self.imports(world.narrow(self.handler_wit(), caps)), caps)

    def test_http_adds_the_wasi_import(self):
        text = world.narrow(self.handler_wit(), world.normalize(["http", "sql"]))
        self.assertEqual(self.imports(text), ["sql", "settings", "log", world.WASI_HTTP])

    def test_the_export_is_the_contracts(self):
        text = world.narrow(self.handler_wit(), world.normalize([]))
        self.assertIn("export handle: func(e: event) -> result<_, handler-error>;", text)

    def test_unknown_capabilities_are_refused(self):
        with self.assertRaises(world.WorldError) as caught:
            world.normalize(["producer", "filesystem"])
        self.assertIn("unknown capability `filesystem`", str(caught.exception))

    def test_the_shipped_contract_is_the_repositorys(self):
        for source in REPO_WIT.glob("*.wit"):
            shipped = world.shipped_wit() / "kasm" / source.name
            self.assertEqual(shipped.read_text(), source.read_text(), source.name)


class ResolveTest(unittest.TestCase):
    def project(self, toml: str) -> Path:
        folder = Path(tempfile.mkdtemp()) / "my-handler"
        folder.mkdir()
        (folder / "handler.py").write_text("")
        (folder / "other.py").write_text("")
        (folder / "pyproject.toml").write_text(toml)
        return folder

    def test_a_folder_takes_tool_kasm(self):
        folder = self.project('[tool.kasm]\nname = "mine"\ncapabilities = ["sql", "kv"]\n')
        project = build.resolve(folder)
        self.assertEqual((project.module, project.name), ("handler", "mine"))
        self.assertEqual(project.capabilities, ["kv", "sql", "settings", "log"])
        self.assertEqual(project.python_path[0], folder.resolve())

    def test_flags_win_and_a_file_names_its_module(self):
        folder = self.project('[tool.kasm]\nmodule = "handler"\ncapabilities = ["sql"]\n')
        project = build.resolve(folder / "other.py", capabilities=["producer"])
        self.assertEqual(project.module, "other")
        self.assertEqual(project.capabilities, ["producer", "settings", "log"])

    def test_unknown_keys_and_capabilities_are_refused(self):
        with self.assertRaises(build.BuildError) as caught:
            build.resolve(self.project('[tool.kasm]\ncapability = ["sql"]\n'))
        self.assertIn("unknown key(s) in [tool.kasm]: capability", str(caught.exception))
        with self.assertRaises(build.BuildError) as caught:
            build.resolve(self.project('[tool.kasm]\ncapabilities = ["net"]\n'))
        self.assertIn("unknown capability `net`", str(caught.exception))

    def test_the_guest_section_is_a_custom_section_naming_python(self):
        section = build.guest_section(build.Project("handler", "h", ["producer", "settings", "log"]))
        self.assertEqual(section[0], 0, "custom section id")
        size, at = 0, 1
        for shift in range(0, 35, 7):
            size |= (section[at] & 0x7F) << shift
            at += 1
            if not section[at - 1] & 0x80:
                break
        self.assertEqual(size, len(section) - at)
        name_len = section[at]
        self.assertEqual(section[at + 1 : at + 1 + name_len], b"kasm:guest")
        meta = json.loads(section[at + 1 + name_len :])
        self.assertEqual(meta["language"], "python")
        self.assertEqual(meta["capabilities"], ["producer", "settings", "log"])

    def test_the_entry_module_imports_the_handler_first(self):
        source = build.entry_source("handler")
        self.assertLess(source.index("import handler"), source.index("KasmWorld"))


class TaskAppTest(unittest.TestCase):
    def event(self, **task):
        payload = {
            "event_id": "evt-1",
            "event_type": "task.created",
            "task_id": "t-1",
            "user_id": "u1",
            "timestamp": "2026-11-20T08:30:00+01:00",
            "task": {"title": "Buy milk", **task},
            "unknown": "ignored",
        }
        return Event("evt-1", "task-events", json.dumps(payload))

    def test_decodes_with_defaults_and_encodes_in_rust_order(self):
        decoded = TaskEvent.from_event(self.event(due_date="2026-11-27", description=None))
        self.assertEqual(
            decoded.encode(),
            '{"event_id":"evt-1","event_type":"task.created","task_id":"t-1","user_id":"u1",'
            '"task":{"title":"Buy milk","due_date":"2026-11-27","tags":[],"completed":false},'
            '"timestamp":"2026-11-20T07:30:00Z"}',
        )

    def test_a_rule_round_trips(self):
        rule = {"frequency": "weekly", "interval": 2, "weekdays": ["fri", "mon"], "until": "2027-06-30"}
        decoded = TaskEvent.from_event(self.event(recurrence=rule))
        self.assertEqual(decoded.task.recurrence.to_json(), rule)

    def test_what_does_not_fit_is_fatal_and_named(self):
        for task, why in (
            ({"title": None}, "task.title: expected a string, found null"),
            ({"tags": None}, "task.tags: expected an array"),
            ({"completed": 1}, "task.completed: expected a boolean"),
            ({"due_date": "27/11/2026"}, "task.due_date"),
            ({"occurrence": -1}, "task.occurrence"),
            ({"recurrence": {"frequency": "yearly"}}, "unknown variant `yearly`"),
        ):
            with self.assertRaises(Fatal) as caught:
                TaskEvent.from_event(self.event(**task))
            self.assertIn(why, caught.exception.message)
        with self.assertRaises(Fatal) as caught:
            TaskEvent.from_event(Event("e", "t", b'{"event_id": "x"}'))
        self.assertIn("missing field `event_type`", caught.exception.message)

    def test_instants_keep_nanoseconds_and_convert_to_utc(self):
        self.assertEqual(Instant.parse("2026-11-27T10:05:00+01:00").rfc3339(), "2026-11-27T09:05:00Z")
        self.assertEqual(Instant.parse("2026-11-27T09:00:00.5Z").rfc3339(), "2026-11-27T09:00:00.500Z")
        self.assertEqual(
            Instant.parse("2026-11-27T09:00:00.123456789Z").rfc3339(), "2026-11-27T09:00:00.123456789Z"
        )
        self.assertEqual(Instant.parse("2026-11-27T09:00:00.1239Z").rfc3339_millis(), "2026-11-27T09:00:00.123Z")
        self.assertEqual(Instant.parse("2026-11-27T09:00:00Z").rfc3339(z=False), "2026-11-27T09:00:00+00:00")
        self.assertLess(Instant.parse("2026-11-27T09:00:00Z"), Instant.parse("2026-11-27T09:00:00.000000001Z"))

    def test_reminder(self):
        payload = b'{"event_id":"r","task_id":"t","user_id":"u","title":"x",' \
                  b'"due_at":"2026-11-27T09:00:00Z","remind_at":"2026-11-27T08:00:00Z","channel":null}'
        reminder = Reminder.from_event(Event("r", "reminders", payload))
        self.assertIsNone(reminder.channel)
        self.assertLess(reminder.remind_at, reminder.due_at)


if __name__ == "__main__":
    unittest.main()
