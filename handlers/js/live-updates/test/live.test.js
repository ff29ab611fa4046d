// The live-updates logic, natively (node --test): the same cases as the Rust handler's tests.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { Event, Fatal } from 'kasm-guest';
import { TaskEvent } from 'kasm-guest/taskapp';

import { liveUpdate } from '../live.js';

function taskEvent(userId, eventType) {
  return TaskEvent.fromJson({
    event_id: 'evt-3',
    event_type: eventType,
    task_id: 't-9',
    user_id: userId,
    timestamp: '2026-11-27T09:15:00Z',
    task: { title: 'Call mom', due_date: '2026-11-28', priority: 'high' },
  });
}

test('the update goes to the user\'s channel', () => {
  const source = taskEvent('u1', 'task.updated');
  const update = liveUpdate(source);
  assert.equal(update.channel, 'user:u1');
  assert.equal(update.eventType, 'task.updated');
  assert.equal(update.taskId, 't-9');
  assert.equal(update.task, source.task);
  assert.ok(update.at.equals(source.timestamp));
});

test('unknown event types are forwarded', () => {
  assert.equal(liveUpdate(taskEvent('u1', 'task.archived')).eventType, 'task.archived');
});

test('an empty user is fatal, naming the event', () => {
  assert.throws(() => liveUpdate(taskEvent(' ', 'task.created')), (error) => {
    assert.ok(error instanceof Fatal);
    assert.match(error.message, /evt-3/);
    return true;
  });
});

test('the pushed JSON is byte for byte what the Rust handler pushes', () => {
  assert.equal(
    liveUpdate(taskEvent('u1', 'task.deleted')).encode(),
    '{"channel":"user:u1","event_type":"task.deleted","task_id":"t-9","task":{"title":"Call mom",' +
      '"due_date":"2026-11-28","priority":"high","tags":[],"completed":false},"at":"2026-11-27T09:15:00Z"}',
  );
});

test('the demo event is pushed to u1', () => {
  const demo = readFileSync(new URL('../demo/event.json', import.meta.url));
  const event = new Event('evt-demo', 'task-updates', demo);
  assert.equal(liveUpdate(TaskEvent.fromEvent(event)).channel, 'user:u1');
});

test('a payload that is not a task event is fatal as undecodable', () => {
  const event = new Event('evt-bad', 'task-updates', '{"event_type": "task.created"}');
  assert.throws(() => TaskEvent.fromEvent(event), (error) => {
    assert.ok(error instanceof Fatal);
    assert.equal(error.message, 'undecodable payload: missing field `event_id`');
    return true;
  });
});
