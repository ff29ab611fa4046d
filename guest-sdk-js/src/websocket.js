// Push messages to the WebSocket clients of a channel: the `websocket` capability.
//
// A push is an effect of the call, like a publish: the host pushes it only after the handler
// returned without throwing and its publishes were acknowledged. Delivery is best effort: a
// client that is not connected, or too slow to keep up, misses the message.

import { websocket } from '#kasm-capabilities';
import { compactJson } from './codec.js';
import { Fatal, payloadOf } from './errors.js';

/**
 * Queue `message` (text, usually JSON) for every client of `channel`. A refusal is `Fatal`:
 * the host refuses only when the channel is not a channel name (1-200 characters of letters,
 * digits, `:._-`), the message is over the size limit, or the call pushed more than its
 * limit, none of which a retry changes.
 * @param {string} channel
 * @param {string} message
 */
export function broadcast(channel, message) {
  try {
    websocket.broadcast(channel, String(message));
  } catch (error) {
    const reason = payloadOf(error);
    if (typeof reason !== 'string') throw error;
    throw new Fatal(`push to ${channel} refused: ${reason}`);
  }
}

/** Serialize `value` as compact JSON and `broadcast` it to `channel`. */
export function broadcastJson(channel, value) {
  let text;
  try {
    text = compactJson(value);
  } catch (error) {
    throw new Fatal(`encoding the push to ${channel}: ${error.message}`);
  }
  broadcast(channel, text);
}
