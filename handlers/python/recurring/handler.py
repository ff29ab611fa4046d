"""The recurring-task service: consumes task events (topic ``task-events``) and, when a task
with a recurrence rule is completed, emits a ``task.created`` event for its next occurrence
back to the topic it came from (``task-events`` in the task app), keyed by user id. Every
other event, a task without a rule, and a series whose rule has ended produce nothing.

The series: the first task of a series carries the rule and a due date. Each emitted task
keeps the rule, gets ``series_id`` (the first task's id), ``occurrence`` (1 for the first
task, counting up), a ``task_id`` derived from both (:func:`occurrence_task_id`) and
``completed: false``. Its event's timestamp is the completion event's, so re-handling the
same completion emits the same event, byte for byte.

The rules:

- ``daily``: every ``interval`` days.
- ``weekly`` with ``weekdays``: the next listed weekday later in the same week, else the
  first listed weekday ``interval`` weeks after this week (weeks start on Monday). Without
  ``weekdays``: ``interval`` weeks after the due date, on the same weekday.
- ``monthly``: ``interval`` months later, on ``day_of_month`` clamped to the month's length.
  The anchor defaults to the first due date's day and is written into the emitted rule, so
  Jan 31 goes Feb 28 (29 in a leap year), then Mar 31 again.
- ``until`` (inclusive) and ``count`` (total occurrences, the first included) end the series.

A rule that is not valid (interval 0, count 0, weekdays outside ``weekly``, a day of month
outside 1..=31 or outside ``monthly``) or a recurring task without a due date is fatal: the
event is wrong, and retrying it would not fix it.

The same service as the Rust handler in ``handlers/recurring``, byte for byte.
"""

import calendar
from dataclasses import replace
from datetime import date, timedelta
from typing import Optional

from kasm_guest import Event, Fatal, handler, log, next_event_id, publish
from kasm_guest.taskapp import WEEKDAYS, Recurrence, TaskEvent


@handler
def handle(event: Event) -> None:
    task_event = TaskEvent.from_event(event)
    if task_event.event_type != TaskEvent.COMPLETED or task_event.task.recurrence is None:
        return
    following = next_occurrence(task_event, next_event_id())
    if following is None:
        log.info(f"task {task_event.task_id} completed: its series has ended")
        return
    # Back to the topic the completion came from: the series lives on one topic.
    publish(event.topic, following.encode(), key=following.user_id)
    due = following.task.due_date.isoformat() if following.task.due_date else ""
    log.info(
        f"task {task_event.task_id} completed: next occurrence {following.task_id} due {due}"
    )


def next_occurrence(event: TaskEvent, new_event_id: str) -> Optional[TaskEvent]:
    """The ``task.created`` event of the occurrence after the one ``event`` completes, with
    event id ``new_event_id``; ``None`` if ``event`` is not a completion of a recurring task
    or the series has ended. :class:`Fatal` if the rule or the task is invalid."""
    if event.event_type != TaskEvent.COMPLETED:
        return None
    rule = event.task.recurrence
    if rule is None:
        return None

    def refuse(why: str) -> Fatal:
        return Fatal(f"task {event.task_id} (event {event.event_id}): {why}")

    why = validate(rule)
    if why is not None:
        raise refuse(f"invalid recurrence rule: {why}")
    due = event.task.due_date
    if due is None:
        raise refuse("recurring task has no due_date")
    occurrence = 1 if event.task.occurrence is None else event.task.occurrence
    if occurrence == 0:
        raise refuse("occurrence 0 (occurrences count from 1)")
    if rule.count is not None and occurrence >= rule.count:
        return None
    try:
        next_due = next_due_date(rule, due)
    except OverflowError:
        raise refuse(f"the occurrence after {due.isoformat()} is out of the supported date range")
    if rule.until is not None and next_due > rule.until:
        return None
    next_number = occurrence + 1
    if next_number > 2**32 - 1:
        raise refuse("occurrence number overflows")
    series_id = event.task.series_id if event.task.series_id is not None else event.task_id

    next_rule = replace(rule, weekdays=list(rule.weekdays))
    if rule.frequency == "monthly":
        # Pin the anchor: the next due date may be clamped (Jan 31 -> Feb 28) and must not
        # become the anchor of the one after.
        next_rule.day_of_month = rule.day_of_month if rule.day_of_month is not None else due.day
    return TaskEvent(
        event_id=new_event_id,
        event_type=TaskEvent.CREATED,
        task_id=occurrence_task_id(series_id, next_number),
        user_id=event.user_id,
        task=replace(
            event.task,
            tags=list(event.task.tags),
            due_date=next_due,
            completed=False,
            recurrence=next_rule,
            series_id=series_id,
            occurrence=next_number,
        ),
        timestamp=event.timestamp,
    )


def occurrence_task_id(series_id: str, occurrence: int) -> str:
    """The task id of occurrence ``occurrence`` of a series: ``<series_id>-occ<occurrence>``.
    The same inputs always give the same id, so a re-handled completion does not create a
    second task."""
    return f"{series_id}-occ{occurrence}"


def validate(rule: Recurrence) -> Optional[str]:
    """What is wrong with the rule's fields against each other, or ``None``."""
    if rule.interval == 0:
        return "interval must be at least 1"
    if rule.count == 0:
        return "count must be at least 1"
    if rule.weekdays and rule.frequency != "weekly":
        return "weekdays only apply to a weekly rule"
    if rule.day_of_month is not None:
        if rule.frequency != "monthly":
            return "day_of_month only applies to a monthly rule"
        if not 1 <= rule.day_of_month <= 31:
            return f"day_of_month {rule.day_of_month} is not in 1..=31"
    return None


def next_due_date(rule: Recurrence, due: date) -> date:
    """The due date of the occurrence after the one due on ``due``, ignoring ``until`` and
    ``count``. ``rule`` must be valid (see :func:`validate`). :class:`OverflowError` past the
    supported date range."""
    if rule.frequency == "daily":
        return due + timedelta(days=rule.interval)
    if rule.frequency == "weekly":
        if not rule.weekdays:
            return due + timedelta(weeks=rule.interval)
        days = sorted({WEEKDAYS.index(day) for day in rule.weekdays})
        today = due.weekday()
        later = [day for day in days if day > today]
        if later:
            return due + timedelta(days=later[0] - today)
        monday = due - timedelta(days=today)
        return monday + timedelta(days=7 * rule.interval + days[0])
    anchor = rule.day_of_month if rule.day_of_month is not None else due.day
    month_index = due.year * 12 + (due.month - 1) + rule.interval
    year, month0 = divmod(month_index, 12)
    if not 1 <= year <= 9999:
        raise OverflowError("year out of range")
    day = min(anchor, calendar.monthrange(year, month0 + 1)[1])
    return date(year, month0 + 1, day)
