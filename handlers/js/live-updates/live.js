// The live-updates service's logic, free of capabilities so that it runs natively in tests.

import { Fatal } from 'kasm-guest';
import { LiveUpdate } from 'kasm-guest/taskapp';

/** The fan-out channel of a user's clients. */
export function userChannel(userId) {
  return `user:${userId}`;
}

/**
 * The update pushing `event` (a `TaskEvent`) to its user's clients. An event without a user
 * has no audience: that is `Fatal`.
 */
export function liveUpdate(event) {
  if (event.userId.trim() === '') {
    throw new Fatal(`task event ${event.eventId} has an empty user_id`);
  }
  return new LiveUpdate({
    channel: userChannel(event.userId),
    eventType: event.eventType,
    taskId: event.taskId,
    task: event.task,
    at: event.timestamp,
  });
}
