"""The audit service's logic, natively: python -m unittest (in this folder, with
guest-sdk-python/src on PYTHONPATH)."""

import json
import unittest
from pathlib import Path

from handler import INSERT, audit_entry, row, summary
from kasm_guest import Event
from kasm_guest.taskapp import TaskEvent


def event(event_type: str, title: str) -> TaskEvent:
    payload = {
        "event_id": "evt-42",
        "event_type": event_type,
        "task_id": "t-7",
        "user_id": "u1",
        "timestamp": "2026-11-27T09:15:00Z",
        "task": {"title": title, "tags": ["shopping"], "completed": True},
    }
    return TaskEvent.from_event(Event("evt-42", "task-events", json.dumps(payload)))


class AuditTest(unittest.TestCase):
    def test_summary_names_task_action_and_user(self):
        for kind in ("created", "updated", "completed", "deleted"):
            self.assertEqual(summary(event(f"task.{kind}", "Buy milk")), f'task "Buy milk" {kind} by user u1')

    def test_unknown_event_types_are_recorded_verbatim(self):
        self.assertEqual(summary(event("task.archived", "Buy milk")), 'task "Buy milk": task.archived by user u1')

    def test_quotes_and_control_characters_are_escaped_as_in_rust(self):
        self.assertEqual(summary(event("task.created", 'Read "Dune"')), 'task "Read \\"Dune\\"" created by user u1')
        self.assertEqual(summary(event("task.created", "a\tb\u0001")), 'task "a\\tb\\u{1}" created by user u1')

    def test_the_row_binds_every_column_of_the_insert(self):
        source = event("task.completed", "Buy milk")
        raw = Event("evt-42", "task-events", b"{}", partition=3, offset=1234)
        values = row(audit_entry(source), raw)
        self.assertEqual(INSERT.count("$"), len(values))
        self.assertEqual(values[0], "evt-42")
        self.assertEqual(values[4], "2026-11-27T09:15:00.000Z")
        self.assertEqual(values[6], '{"title":"Buy milk","tags":["shopping"],"completed":true}')
        self.assertEqual(values[7:], ["task-events", 3, 1234])

    def test_demo_event_is_recorded(self):
        demo = (Path(__file__).parent / "demo" / "event.json").read_bytes()
        entry = audit_entry(TaskEvent.from_event(Event("x", "task-events", demo)))
        self.assertEqual(entry.summary, 'task "Buy milk" completed by user u1')


if __name__ == "__main__":
    unittest.main()
