// Write kasm handlers in JavaScript or TypeScript: a plain function passed to `handler`.
//
//     import { handler, publishJson, log, Fatal } from 'kasm-guest';
//
//     handler((event) => {
//       const order = event.json();            // Fatal("undecodable payload: ...") if not JSON
//       if (!('order_id' in order)) throw new Fatal('no order_id');
//       publishJson('orders-seen', order, { key: event.key });
//       log.info(`order ${order.order_id} seen`);
//     });
//
// - `Event` is the record the host hands over.
// - `Retryable` and `Fatal` tell the host what to do with a failed record (retry with backoff
//   then dead-letter, or dead-letter at once); anything else thrown traps.
// - `publish`, `publishJson`, `nextEventId` and the namespaces `kv`, `sql`, `websocket`,
//   `settings` and `log` call the host capabilities. Publishes, SQL writes, kv writes and
//   pushes are effects of the call: the host applies them only after the handler returns
//   without throwing.
// - `kasm-guest/taskapp` holds the task app's event types.
//
// `kasm-js build` bundles the handler and its npm dependencies and makes the component.
// Natively (a unit test), the capability functions throw `CapabilityError`: keep business
// logic in plain functions and test those.

export { Event } from './event.js';
export { HandlerError, Retryable, Fatal, CapabilityError } from './errors.js';
export { handler } from './handler.js';
export { publish, publishJson, nextEventId } from './producer.js';
export * as kv from './kv.js';
export * as sql from './sql.js';
export * as websocket from './websocket.js';
export * as settings from './settings.js';
export * as log from './log.js';

/** This SDK's version. */
export const VERSION = '0.1.0';
