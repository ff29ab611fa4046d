// The live-updates service in JavaScript: consumes task events (topic `task-updates`;
// `task-events` works too) and pushes one live update per event to the WebSocket clients of
// its user's channel `user:<user_id>` (the host's `GET /ws`). The same behaviour, and the
// same bytes on the wire, as the Rust handler in handlers/live-updates.
//
// Every event type is forwarded; a client ignores the ones it does not know.

import { handler, log, websocket } from 'kasm-guest';
import { TaskEvent } from 'kasm-guest/taskapp';

import { liveUpdate } from './live.js';

handler((event) => {
  const update = liveUpdate(TaskEvent.fromEvent(event));
  websocket.broadcast(update.channel, update.encode());
  log.debug(`${update.eventType} pushed to ${update.channel}`);
});
