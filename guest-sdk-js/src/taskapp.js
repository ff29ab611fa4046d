// The task app's events, shared by its handlers, with the same JSON as the Rust SDK's
// `kasm_guest::taskapp` and the Python SDK's `kasm_guest.taskapp`.
//
// Everything is JSON with snake_case field names. Dates are ISO 8601 strings (`2026-11-27`),
// checked on input; instants are RFC 3339 (`2026-11-27T09:00:00Z`; an input with another
// offset is converted to UTC) and held as an `Instant`. Optional fields may be absent or
// `null` on input and are left out on output; fields with a default (`tags`, `completed`,
// `interval`, `weekdays`) may be absent but not `null`. Unknown fields are ignored. Output
// keeps the Rust field order, so every SDK writes the same bytes for the same value.
//
// Decoding a payload that does not fit (`TaskEvent.fromEvent`) is `Fatal` with the message
// `undecodable payload: <why>`: it will not fit on a retry either.

import { compactJson } from './codec.js';
import { Fatal } from './errors.js';

/** The units a `Recurrence` steps in. */
export const FREQUENCIES = Object.freeze(['daily', 'weekly', 'monthly']);
/** Days of the week as JSON writes them, Monday first. */
export const WEEKDAYS = Object.freeze(['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun']);

const U32_MAX = 2 ** 32 - 1;

/** A JSON value that does not fit the type; the message names the field. */
export class DecodeError extends Error {}
DecodeError.prototype.name = 'DecodeError';

// --- instants ----------------------------------------------------------------------------

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$/;

function daysInMonth(year, month) {
  const leap = (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;
  return [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1];
}

// Seconds since the epoch of a proleptic Gregorian UTC date-time (any year 0-9999: Date.UTC
// maps years 0-99 to 1900-1999, so the year is set separately).
function epochSeconds(year, month, day, hour, minute, second) {
  const d = new Date(Date.UTC(2000, month - 1, day, hour, minute, second));
  d.setUTCFullYear(year);
  return d.getTime() / 1000;
}

/** A point in time in UTC with nanoseconds (a `Date` stops at milliseconds). */
export class Instant {
  /**
   * @param {number} seconds whole seconds since the Unix epoch
   * @param {number} [nanos] nanoseconds into that second, 0 to 999,999,999
   */
  constructor(seconds, nanos = 0) {
    this.seconds = seconds;
    this.nanos = nanos;
    Object.freeze(this);
  }

  /** An RFC 3339 instant (`2026-11-27T10:00:00.5+01:00`), converted to UTC. */
  static parse(text) {
    const m = RFC3339.exec(text);
    if (m === null) throw new DecodeError(`${JSON.stringify(text)} is not an RFC 3339 date-time`);
    const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number);
    if (month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month)) {
      throw new DecodeError(`${JSON.stringify(text)}: no such day`);
    }
    if (hour > 23 || minute > 59 || second > 59) {
      throw new DecodeError(`${JSON.stringify(text)}: no such time of day`);
    }
    let shift = 0;
    const offset = m[8];
    if (offset !== 'Z' && offset !== 'z') {
      const hours = Number(offset.slice(1, 3));
      const minutes = Number(offset.slice(4, 6));
      if (hours > 23 || minutes > 59) throw new DecodeError(`${JSON.stringify(text)}: offset ${offset} out of range`);
      shift = (offset[0] === '-' ? -1 : 1) * (hours * 3600 + minutes * 60);
    }
    const nanos = Number((m[7] ?? '0').slice(0, 9).padEnd(9, '0'));
    return new Instant(epochSeconds(year, month, day, hour, minute, second) - shift, nanos);
  }

  /** The instant of a `Date`. */
  static of(date) {
    const ms = date.getTime();
    if (!Number.isFinite(ms)) throw new RangeError('an Instant needs a valid Date');
    const seconds = Math.floor(ms / 1000);
    return new Instant(seconds, (ms - seconds * 1000) * 1_000_000);
  }

  /** This instant as a `Date` (nanoseconds truncated to milliseconds). */
  toDate() {
    return new Date(this.seconds * 1000 + Math.floor(this.nanos / 1_000_000));
  }

  /**
   * RFC 3339 with as many fraction digits as needed (0, 3, 6 or 9), as chrono writes it:
   * `2026-11-27T09:00:00Z`.
   */
  rfc3339() {
    const whole = new Date(this.seconds * 1000).toISOString().slice(0, 19);
    let fraction = '';
    if (this.nanos % 1_000_000 === 0 && this.nanos !== 0) {
      fraction = `.${String(this.nanos / 1_000_000).padStart(3, '0')}`;
    } else if (this.nanos % 1000 === 0 && this.nanos !== 0) {
      fraction = `.${String(this.nanos / 1000).padStart(6, '0')}`;
    } else if (this.nanos !== 0) {
      fraction = `.${String(this.nanos).padStart(9, '0')}`;
    }
    return `${whole}${fraction}Z`;
  }

  toJSON() {
    return this.rfc3339();
  }

  toString() {
    return this.rfc3339();
  }

  equals(other) {
    return other instanceof Instant && other.seconds === this.seconds && other.nanos === this.nanos;
  }
}

// --- field readers -----------------------------------------------------------------------

function kind(value) {
  if (value === null) return 'null';
  if (typeof value === 'boolean') return `boolean \`${value}\``;
  if (typeof value === 'number') return `number ${value}`;
  if (typeof value === 'string') return `string ${JSON.stringify(value)}`;
  if (Array.isArray(value)) return 'an array';
  return 'an object';
}

function object(value, what) {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new DecodeError(`${what}: expected an object, found ${kind(value)}`);
  }
  return value;
}

function string(value, what) {
  if (typeof value !== 'string') throw new DecodeError(`${what}: expected a string, found ${kind(value)}`);
  return value;
}

function u32(value, what) {
  if (!Number.isInteger(value) || value < 0 || value > U32_MAX) {
    throw new DecodeError(`${what}: expected an integer from 0 to ${U32_MAX}, found ${kind(value)}`);
  }
  return value;
}

function bool(value, what) {
  if (typeof value !== 'boolean') throw new DecodeError(`${what}: expected a boolean, found ${kind(value)}`);
  return value;
}

function date(value, what) {
  const text = string(value, what);
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text);
  if (m === null) throw new DecodeError(`${what}: ${JSON.stringify(text)} is not a date (YYYY-MM-DD)`);
  const [year, month, day] = m.slice(1).map(Number);
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month)) {
    throw new DecodeError(`${what}: ${JSON.stringify(text)} is not a day of the calendar`);
  }
  return text;
}

function instant(value, what) {
  try {
    return Instant.parse(string(value, what));
  } catch (error) {
    if (error instanceof DecodeError && !error.message.startsWith(what)) {
      throw new DecodeError(`${what}: ${error.message}`);
    }
    throw error;
  }
}

function list(item) {
  return (value, what) => {
    if (!Array.isArray(value)) throw new DecodeError(`${what}: expected an array, found ${kind(value)}`);
    return value.map((v, i) => item(v, `${what}[${i}]`));
  };
}

function oneOf(names) {
  return (value, what) => {
    const name = string(value, what);
    if (!names.includes(name)) {
      throw new DecodeError(`${what}: unknown variant \`${name}\`, expected one of ${names.join(', ')}`);
    }
    return name;
  };
}

const has = (obj, key) => Object.prototype.hasOwnProperty.call(obj, key);

function required(obj, key, prefix, read) {
  if (!has(obj, key)) throw new DecodeError(`missing field \`${prefix}${key}\``);
  return read(obj[key], `${prefix}${key}`);
}

function optional(obj, key, prefix, read) {
  const value = has(obj, key) ? obj[key] : undefined;
  return value === undefined || value === null ? undefined : read(value, `${prefix}${key}`);
}

function defaulted(obj, key, prefix, read, fallback) {
  return has(obj, key) ? read(obj[key], `${prefix}${key}`) : fallback;
}

function put(out, key, value) {
  if (value !== undefined) out[key] = value;
}

function decode(event, read) {
  const value = event.json();
  try {
    return read(value);
  } catch (error) {
    if (error instanceof DecodeError) throw new Fatal(`undecodable payload: ${error.message}`);
    throw error;
  }
}

// --- the types ---------------------------------------------------------------------------

/** How a task repeats. The first occurrence is the task's own `due_date`. */
export class Recurrence {
  constructor(fields) {
    /** The unit the rule steps in: `daily`, `weekly` or `monthly`. */
    this.frequency = fields.frequency;
    /** Step by this many units. At least 1. */
    this.interval = fields.interval ?? 1;
    /** `weekly` only: the days the task falls on; empty: the weekday of the due date. */
    this.weekdays = fields.weekdays ?? [];
    /** `monthly` only: the day of the month (1-31), clamped to each month's length. */
    this.dayOfMonth = fields.dayOfMonth;
    /** The last day an occurrence may fall on (inclusive), `YYYY-MM-DD`. */
    this.until = fields.until;
    /** The total number of occurrences, the first one included. */
    this.count = fields.count;
  }

  static fromJson(value, what = 'recurrence') {
    const obj = object(value, what);
    const p = `${what}.`;
    return new Recurrence({
      frequency: required(obj, 'frequency', p, oneOf(FREQUENCIES)),
      interval: defaulted(obj, 'interval', p, u32, 1),
      weekdays: defaulted(obj, 'weekdays', p, list(oneOf(WEEKDAYS)), []),
      dayOfMonth: optional(obj, 'day_of_month', p, u32),
      until: optional(obj, 'until', p, date),
      count: optional(obj, 'count', p, u32),
    });
  }

  toJSON() {
    const out = { frequency: this.frequency, interval: this.interval };
    if (this.weekdays.length > 0) out.weekdays = [...this.weekdays];
    put(out, 'day_of_month', this.dayOfMonth);
    put(out, 'until', this.until);
    put(out, 'count', this.count);
    return out;
  }
}

/** The fields of a task. */
export class TaskData {
  constructor(fields) {
    /** Short title, e.g. `Buy milk`. */
    this.title = fields.title;
    /** Longer free text. */
    this.description = fields.description;
    /** The day the task is due (`YYYY-MM-DD`); required for a recurring task. */
    this.dueDate = fields.dueDate;
    /** Priority as the task app names it (`low`, `medium`, `high`, ...). */
    this.priority = fields.priority;
    /** Free-form labels. */
    this.tags = fields.tags ?? [];
    /** Whether the task is done. */
    this.completed = fields.completed ?? false;
    /** The rule that repeats this task; absent for a one-off task. */
    this.recurrence = fields.recurrence;
    /** The series a recurring task belongs to: the task id of its first occurrence. */
    this.seriesId = fields.seriesId;
    /** Which occurrence of its series this task is, counting from 1; absent means 1. */
    this.occurrence = fields.occurrence;
  }

  static fromJson(value, what = 'task') {
    const obj = object(value, what);
    const p = `${what}.`;
    return new TaskData({
      title: required(obj, 'title', p, string),
      description: optional(obj, 'description', p, string),
      dueDate: optional(obj, 'due_date', p, date),
      priority: optional(obj, 'priority', p, string),
      tags: defaulted(obj, 'tags', p, list(string), []),
      completed: defaulted(obj, 'completed', p, bool, false),
      recurrence: optional(obj, 'recurrence', p, (v, w) => Recurrence.fromJson(v, w)),
      seriesId: optional(obj, 'series_id', p, string),
      occurrence: optional(obj, 'occurrence', p, u32),
    });
  }

  toJSON() {
    const out = { title: this.title };
    put(out, 'description', this.description);
    put(out, 'due_date', this.dueDate);
    put(out, 'priority', this.priority);
    out.tags = [...this.tags];
    out.completed = this.completed;
    put(out, 'recurrence', this.recurrence?.toJSON());
    put(out, 'series_id', this.seriesId);
    put(out, 'occurrence', this.occurrence);
    return out;
  }

  /** Compact JSON, field for field what the Rust SDK writes. */
  encode() {
    return compactJson(this);
  }
}

/** A change to a task, as the task app publishes it (topics `task-events`, `task-updates`). */
export class TaskEvent {
  constructor(fields) {
    /** The event's own id; the host uses it to deduplicate. */
    this.eventId = fields.eventId;
    /** What happened: one of the `TaskEvent.*` constants; other values are passed through. */
    this.eventType = fields.eventType;
    /** The task the event is about. */
    this.taskId = fields.taskId;
    /** The user who owns the task. */
    this.userId = fields.userId;
    /** The task as it is after the change (for `task.deleted`, as it was). */
    this.task = fields.task;
    /** When the change happened, an `Instant`. */
    this.timestamp = fields.timestamp;
  }

  static fromJson(value) {
    const obj = object(value, 'the task event');
    return new TaskEvent({
      eventId: required(obj, 'event_id', '', string),
      eventType: required(obj, 'event_type', '', string),
      taskId: required(obj, 'task_id', '', string),
      userId: required(obj, 'user_id', '', string),
      task: required(obj, 'task', '', (v, w) => TaskData.fromJson(v, w)),
      timestamp: required(obj, 'timestamp', '', instant),
    });
  }

  /** The task event in `event`'s payload; `Fatal` if it is not one. */
  static fromEvent(event) {
    return decode(event, (value) => TaskEvent.fromJson(value));
  }

  toJSON() {
    return {
      event_id: this.eventId,
      event_type: this.eventType,
      task_id: this.taskId,
      user_id: this.userId,
      task: this.task.toJSON(),
      timestamp: this.timestamp.rfc3339(),
    };
  }

  /** Compact JSON, field for field what the Rust SDK writes. */
  encode() {
    return compactJson(this);
  }
}
TaskEvent.CREATED = 'task.created';
TaskEvent.UPDATED = 'task.updated';
TaskEvent.COMPLETED = 'task.completed';
TaskEvent.DELETED = 'task.deleted';

/** A change pushed to a user's open clients. */
export class LiveUpdate {
  constructor(fields) {
    /** The fan-out channel, `user:<user_id>`. */
    this.channel = fields.channel;
    /** The task event's `event_type`. */
    this.eventType = fields.eventType;
    /** The task concerned. */
    this.taskId = fields.taskId;
    /** The task's fields after the change (as it was, for `task.deleted`). */
    this.task = fields.task;
    /** When the change happened, an `Instant`. */
    this.at = fields.at;
  }

  toJSON() {
    return {
      channel: this.channel,
      event_type: this.eventType,
      task_id: this.taskId,
      task: this.task.toJSON(),
      at: this.at.rfc3339(),
    };
  }

  /** Compact JSON, field for field what the Rust SDK writes. */
  encode() {
    return compactJson(this);
  }
}
