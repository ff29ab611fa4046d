"""The recurring service's rules, natively: python -m unittest (in this folder, with
guest-sdk-python/src on PYTHONPATH)."""

import copy
import json
import unittest
from datetime import date
from pathlib import Path

from handler import next_due_date, next_occurrence, validate
from kasm_guest import Event, Fatal
from kasm_guest.taskapp import Recurrence, TaskEvent


def rule(value: dict) -> Recurrence:
    return Recurrence.from_json(value)


def completed(due, recurrence) -> TaskEvent:
    payload = {
        "event_id": "evt-done-1",
        "event_type": "task.completed",
        "task_id": "t-1",
        "user_id": "u1",
        "timestamp": "2026-11-27T18:00:00Z",
        "task": {
            "title": "Water the plants",
            "description": "balcony too",
            "due_date": due,
            "priority": "low",
            "tags": ["home"],
            "completed": True,
            "recurrence": recurrence,
        },
    }
    return TaskEvent.from_event(Event("evt-done-1", "task-events", json.dumps(payload)))


def complete(created: TaskEvent) -> TaskEvent:
    done = copy.deepcopy(created)
    done.event_type = TaskEvent.COMPLETED
    done.event_id = f"done-{created.task_id}"
    done.task.completed = True
    return done


def series(first: TaskEvent, n: int) -> list:
    dates, current = [], first
    for i in range(n):
        following = next_occurrence(current, f"e{i}")
        if following is None:
            break
        dates.append(following.task.due_date)
        current = complete(following)
    return dates


def following_due(rule_json: dict, due: date) -> date:
    r = rule(rule_json)
    assert validate(r) is None
    return next_due_date(r, due)


class RecurringTest(unittest.TestCase):
    def test_daily_interval_three(self):
        self.assertEqual(following_due({"frequency": "daily", "interval": 3}, date(2026, 12, 30)), date(2027, 1, 2))
        first = completed("2024-02-27", {"frequency": "daily", "interval": 3})
        self.assertEqual(series(first, 3), [date(2024, 3, 1), date(2024, 3, 4), date(2024, 3, 7)])

    def test_weekly_mon_wed_fri_steps_through_the_week_and_across_its_end(self):
        first = completed("2026-11-23", {"frequency": "weekly", "weekdays": ["fri", "mon", "wed"]})
        self.assertEqual(
            series(first, 5),
            [date(2026, 11, 25), date(2026, 11, 27), date(2026, 11, 30), date(2026, 12, 2), date(2026, 12, 4)],
        )

    def test_weekly_interval_two_skips_every_other_week(self):
        first = completed("2026-11-25", {"frequency": "weekly", "interval": 2, "weekdays": ["mon", "wed", "fri"]})
        self.assertEqual(
            series(first, 5),
            [date(2026, 11, 27), date(2026, 12, 7), date(2026, 12, 9), date(2026, 12, 11), date(2026, 12, 21)],
        )

    def test_weekly_without_weekdays_keeps_the_weekday(self):
        self.assertEqual(following_due({"frequency": "weekly", "interval": 2}, date(2026, 11, 26)), date(2026, 12, 10))

    def test_monthly_end_of_month_clamps_without_drift(self):
        first = completed("2025-01-31", {"frequency": "monthly"})
        self.assertEqual(
            series(first, 4), [date(2025, 2, 28), date(2025, 3, 31), date(2025, 4, 30), date(2025, 5, 31)]
        )
        self.assertEqual(next_occurrence(first, "e").task.recurrence.day_of_month, 31)
        leap = completed("2024-02-29", {"frequency": "monthly", "interval": 12})
        self.assertEqual(
            series(leap, 4), [date(2025, 2, 28), date(2026, 2, 28), date(2027, 2, 28), date(2028, 2, 29)]
        )

    def test_until_is_inclusive_and_count_counts_all_occurrences(self):
        ended = completed("2026-11-28", {"frequency": "daily", "interval": 3, "until": "2026-11-30"})
        self.assertIsNone(next_occurrence(ended, "e"))
        last = completed("2026-11-27", {"frequency": "daily", "interval": 3, "until": "2026-11-30"})
        self.assertEqual(series(last, 5), [date(2026, 11, 30)])
        counted = completed("2026-11-27", {"frequency": "daily", "count": 3})
        self.assertEqual(len(series(counted, 10)), 2)

    def test_the_next_event_is_a_new_task_of_the_same_series(self):
        first = completed("2026-11-27", {"frequency": "weekly"})
        following = next_occurrence(first, "evt-next")
        self.assertEqual((following.event_id, following.event_type), ("evt-next", "task.created"))
        self.assertEqual(following.task_id, "t-1-occ2")
        self.assertEqual((following.task.series_id, following.task.occurrence), ("t-1", 2))
        self.assertFalse(following.task.completed)
        self.assertEqual(following.timestamp, first.timestamp)
        self.assertEqual(following.task.recurrence, first.task.recurrence)
        third = next_occurrence(complete(following), "evt-3")
        self.assertEqual((third.task_id, third.task.series_id, third.task.occurrence), ("t-1-occ3", "t-1", 3))
        self.assertTrue(first.task.completed, "the source event is left as it was")

    def test_deterministic_byte_for_byte(self):
        first = completed("2026-11-27", {"frequency": "daily"})
        self.assertEqual(next_occurrence(first, "e").encode(), next_occurrence(first, "e").encode())

    def test_other_events_and_one_off_tasks_produce_nothing(self):
        recurring = completed("2026-11-27", {"frequency": "daily"})
        for event_type in ("task.created", "task.updated", "task.deleted", "task.archived"):
            self.assertIsNone(next_occurrence(recurring.copy(event_type=event_type), "e"))
        self.assertIsNone(next_occurrence(completed("2026-11-27", None), "e"))

    def test_invalid_rules_are_fatal(self):
        for value, why in (
            ({"frequency": "daily", "interval": 0}, "interval must be at least 1"),
            ({"frequency": "daily", "count": 0}, "count"),
            ({"frequency": "daily", "weekdays": ["mon"]}, "weekdays"),
            ({"frequency": "weekly", "day_of_month": 3}, "day_of_month"),
            ({"frequency": "monthly", "day_of_month": 32}, "day_of_month"),
        ):
            with self.assertRaises(Fatal) as caught:
                next_occurrence(completed("2026-11-27", value), "e")
            self.assertIn(why, caught.exception.message)
            self.assertIn("t-1", caught.exception.message)
        with self.assertRaises(Fatal) as caught:
            next_occurrence(completed(None, {"frequency": "daily"}), "e")
        self.assertIn("no due_date", caught.exception.message)

    def test_end_of_the_calendar_is_fatal(self):
        with self.assertRaises(Fatal) as caught:
            next_occurrence(completed("9999-12-31", {"frequency": "daily"}), "e")
        self.assertIn("out of the supported date range", caught.exception.message)

    def test_demo_event_emits_the_next_occurrence(self):
        demo = (Path(__file__).parent / "demo" / "event.json").read_bytes()
        following = next_occurrence(TaskEvent.from_event(Event("x", "task-events", demo)), "e")
        self.assertEqual(following.task.due_date, date(2026, 11, 30))
        self.assertEqual(following.task_id, "t-42-occ2")


if __name__ == "__main__":
    unittest.main()
