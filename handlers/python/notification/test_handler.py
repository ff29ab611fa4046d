"""The notification service's logic, natively: python -m unittest (in this folder, with
guest-sdk-python/src on PYTHONPATH)."""

import json
import unittest
from pathlib import Path

from handler import notification
from kasm_guest import Event, Fatal
from kasm_guest.taskapp import Reminder


def reminder(**changes) -> Reminder:
    value = {
        "event_id": "rem-1",
        "task_id": "t-7",
        "user_id": "u1",
        "title": "Buy milk",
        "due_at": "2026-11-27T09:00:00Z",
        "remind_at": "2026-11-27T08:30:00Z",
        **changes,
    }
    return Reminder.from_event(Event("rem-1", "reminders", json.dumps(value)))


class NotificationTest(unittest.TestCase):
    def test_builds_the_notification_with_the_rust_json(self):
        self.assertEqual(
            notification(reminder()).encode(),
            '{"idempotency_key":"rem-1","user_id":"u1","channel":"push","title":"Buy milk",'
            '"body":"\\"Buy milk\\" is due at 2026-11-27 09:00 UTC","task_id":"t-7",'
            '"due_at":"2026-11-27T09:00:00Z"}',
        )

    def test_body_is_in_utc_whatever_the_input_offset(self):
        n = notification(reminder(due_at="2026-11-27T10:05:00+01:00", remind_at="2026-11-27T07:00:00Z"))
        self.assertEqual(n.body, '"Buy milk" is due at 2026-11-27 09:05 UTC')

    def test_keeps_the_requested_channel_and_defaults_a_blank_one(self):
        self.assertEqual(notification(reminder(channel="email")).channel, "email")
        self.assertEqual(notification(reminder(channel="  ")).channel, "push")
        self.assertEqual(notification(reminder(channel=None)).channel, "push")

    def test_remind_at_equal_to_due_at_is_fine_after_is_fatal(self):
        notification(reminder(remind_at="2026-11-27T09:00:00Z"))
        with self.assertRaises(Fatal) as caught:
            notification(reminder(remind_at="2026-11-27T09:00:01Z"))
        self.assertIn("remind_at 2026-11-27T09:00:01+00:00 is after", caught.exception.message)
        self.assertIn("rem-1", caught.exception.message)

    def test_empty_title_or_user_is_fatal(self):
        for changes, why in (({"title": " "}, "title"), ({"user_id": ""}, "user_id")):
            with self.assertRaises(Fatal) as caught:
                notification(reminder(**changes))
            self.assertIn(why, caught.exception.message)

    def test_demo_event_notifies(self):
        demo = (Path(__file__).parent / "demo" / "event.json").read_bytes()
        n = notification(Reminder.from_event(Event("x", "reminders", demo)))
        self.assertEqual(n.body, '"Buy milk" is due at 2026-11-27 09:00 UTC')


if __name__ == "__main__":
    unittest.main()
