// Types of kasm-guest/taskapp: the task app's events.

import type { Event } from './index.js';

export const FREQUENCIES: readonly ['daily', 'weekly', 'monthly'];
export const WEEKDAYS: readonly ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];

/** A JSON value that does not fit the type; the message names the field. */
export class DecodeError extends Error {}

/** A point in time in UTC with nanoseconds. */
export class Instant {
  constructor(seconds: number, nanos?: number);
  readonly seconds: number;
  readonly nanos: number;
  static parse(text: string): Instant;
  static of(date: Date): Instant;
  toDate(): Date;
  rfc3339(): string;
  toJSON(): string;
  equals(other: unknown): boolean;
}

export class Recurrence {
  constructor(fields: {
    frequency: string;
    interval?: number;
    weekdays?: string[];
    dayOfMonth?: number;
    until?: string;
    count?: number;
  });
  frequency: string;
  interval: number;
  weekdays: string[];
  dayOfMonth: number | undefined;
  until: string | undefined;
  count: number | undefined;
  static fromJson(value: unknown, what?: string): Recurrence;
  toJSON(): object;
}

export class TaskData {
  constructor(fields: {
    title: string;
    description?: string;
    dueDate?: string;
    priority?: string;
    tags?: string[];
    completed?: boolean;
    recurrence?: Recurrence;
    seriesId?: string;
    occurrence?: number;
  });
  title: string;
  description: string | undefined;
  dueDate: string | undefined;
  priority: string | undefined;
  tags: string[];
  completed: boolean;
  recurrence: Recurrence | undefined;
  seriesId: string | undefined;
  occurrence: number | undefined;
  static fromJson(value: unknown, what?: string): TaskData;
  toJSON(): object;
  encode(): string;
}

export class TaskEvent {
  static readonly CREATED: 'task.created';
  static readonly UPDATED: 'task.updated';
  static readonly COMPLETED: 'task.completed';
  static readonly DELETED: 'task.deleted';
  constructor(fields: {
    eventId: string;
    eventType: string;
    taskId: string;
    userId: string;
    task: TaskData;
    timestamp: Instant;
  });
  eventId: string;
  eventType: string;
  taskId: string;
  userId: string;
  task: TaskData;
  timestamp: Instant;
  static fromJson(value: unknown): TaskEvent;
  /** The task event in `event`'s payload; Fatal if it is not one. */
  static fromEvent(event: Event): TaskEvent;
  toJSON(): object;
  encode(): string;
}

export class LiveUpdate {
  constructor(fields: { channel: string; eventType: string; taskId: string; task: TaskData; at: Instant });
  channel: string;
  eventType: string;
  taskId: string;
  task: TaskData;
  at: Instant;
  toJSON(): object;
  encode(): string;
}
