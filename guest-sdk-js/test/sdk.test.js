// kasm-guest natively (node --test): what a handler author relies on without a component.

import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { CapabilityError, Event, Fatal, Retryable, VERSION, handler, kv, log, publish, publishJson, sql } from '../src/index.js';
import { call } from '../src/handler.js';
import { Instant, Recurrence, TaskData, TaskEvent } from '../src/taskapp.js';
import { BuildError, SDK_VERSION, bundle, capabilitiesModule, guestSection, resolveProject } from '../build/build.js';
import * as world from '../build/world.js';

const contract = readFileSync(new URL('../wit/handler.wit', import.meta.url), 'utf8');

test('the narrow world imports only the declared capabilities, settings and log always', () => {
  const caps = world.normalize(['websocket']);
  assert.deepEqual(caps, ['websocket', 'settings', 'log']);
  const text = world.narrow(contract, caps);
  const imports = [...text.matchAll(/^\s*import\s+([a-z-]+);/gm)].map((m) => m[1]);
  assert.deepEqual(imports, ['websocket', 'settings', 'log']);
  assert.match(text, /export handle: func\(e: event\) -> result<_, handler-error>;/);
});

test('an unknown capability is refused by name', () => {
  assert.throws(() => world.normalize(['kafka']), /unknown capability `kafka` \(known: producer, kv/);
});

test('the shipped WIT is the contract', () => {
  for (const file of ['handler.wit', 'capabilities.wit', 'types.wit']) {
    const shipped = readFileSync(join(world.shippedWit(), file), 'utf8');
    const root = readFileSync(new URL(`../../wit/${file}`, import.meta.url), 'utf8');
    assert.equal(shipped, root, `guest-sdk-js/wit/${file} differs from wit/${file}`);
  }
});

test('an event reads its JSON, headers (the last of a name) and key', () => {
  const event = new Event('e-1', 'orders', '{"n": 1}', {
    key: 'k',
    headers: [['h', 'one'], ['h', 'two']],
    offset: 7,
  });
  assert.deepEqual(event.json(), { n: 1 });
  assert.equal(event.headerText('h'), 'two');
  assert.equal(event.header('missing'), undefined);
  assert.equal(event.keyText, 'k');
  assert.equal(event.offset, 7n);
  assert.equal(event.attempt, 1);
});

test('a payload that is not JSON, or not UTF-8, is Fatal', () => {
  assert.throws(() => new Event('e', 't', '{nope').json(), (e) => e instanceof Fatal && /^undecodable payload: /.test(e.message));
  assert.throws(() => new Event('e', 't', new Uint8Array([0xff])).text(), (e) => e instanceof Fatal && /not UTF-8/.test(e.message));
});

test('natively every capability throws CapabilityError', () => {
  assert.throws(() => publish('out', 'x'), CapabilityError);
  assert.throws(() => kv.get('k'), CapabilityError);
  assert.throws(() => sql.query('select 1'), CapabilityError);
  assert.throws(() => log.info('hi'), CapabilityError);
});

test('a value that is not JSON is Fatal before anything is published', () => {
  assert.throws(() => publishJson('out', { x: Number.NaN }), (e) => e instanceof Fatal && /NaN/.test(e.message));
  assert.throws(() => publishJson('out', { x: 1n }), Fatal);
});

test('the export turns Retryable and Fatal into the WIT error and traps on anything else', () => {
  const raw = { id: 'e-1', topic: 't', partition: 0, offset: 0n, payload: new Uint8Array(), headers: [], attempt: 2 };
  let seen;
  handler((event) => {
    seen = event;
    const mode = event.headers[0]?.[0];
    if (mode === 'retry') throw new Retryable('later');
    if (mode === 'fatal') throw new Fatal('never');
    if (mode === 'bug') throw new TypeError('a bug');
  });
  call(raw);
  assert.equal(seen.id, 'e-1');
  assert.equal(seen.attempt, 2);
  assert.throws(() => call({ ...raw, headers: [['retry', new Uint8Array()]] }), (e) => e.tag === 'retryable' && e.val === 'later');
  assert.throws(() => call({ ...raw, headers: [['fatal', new Uint8Array()]] }), (e) => e.tag === 'fatal' && e.val === 'never');
  const printed = [];
  const original = console.error;
  console.error = (text) => printed.push(text);
  try {
    assert.throws(() => call({ ...raw, headers: [['bug', new Uint8Array()]] }), (e) => /kasm: the handler threw TypeError: a bug/.test(String(e)));
  } finally {
    console.error = original;
  }
  assert.match(printed.join('\n'), /TypeError: a bug/);
  assert.throws(() => handler(() => {}), /a component has one handler/);
});

test('task events decode and encode byte for byte like the Rust SDK', () => {
  const source =
    '{"event_id":"e-1","event_type":"task.created","task_id":"t-1","user_id":"u1",' +
    '"task":{"title":"Water plants","due_date":"2026-11-27","tags":["home"],"completed":false,' +
    '"recurrence":{"frequency":"weekly","interval":2,"weekdays":["mon","thu"]}},' +
    '"timestamp":"2026-11-27T09:00:00Z"}';
  const event = TaskEvent.fromEvent(new Event('e-1', 'task-events', source));
  assert.ok(event.task.recurrence instanceof Recurrence);
  assert.equal(event.encode(), source);
});

test('instants convert offsets to UTC and keep nanoseconds as chrono writes them', () => {
  assert.equal(Instant.parse('2026-11-27T10:00:00.5+01:00').rfc3339(), '2026-11-27T09:00:00.500Z');
  assert.equal(Instant.parse('2026-11-27T09:00:00.000001Z').rfc3339(), '2026-11-27T09:00:00.000001Z');
  assert.equal(Instant.parse('0001-01-01T00:00:00Z').rfc3339(), '0001-01-01T00:00:00Z');
  assert.throws(() => Instant.parse('2026-02-30T00:00:00Z'), /no such day/);
});

test('a task event that does not fit names the field', () => {
  const bad = (json) => () => TaskEvent.fromEvent(new Event('e', 't', JSON.stringify(json)));
  const base = { event_id: 'e', event_type: 'x', task_id: 't', user_id: 'u', timestamp: '2026-11-27T09:00:00Z' };
  assert.throws(bad({ ...base, task: { title: 1 } }), { message: 'undecodable payload: task.title: expected a string, found number 1' });
  assert.throws(bad({ ...base, task: { title: 'a', tags: null } }), { message: 'undecodable payload: task.tags: expected an array, found null' });
  assert.throws(
    bad({ ...base, task: { title: 'a', recurrence: { frequency: 'yearly' } } }),
    { message: 'undecodable payload: task.recurrence.frequency: unknown variant `yearly`, expected one of daily, weekly, monthly' },
  );
  assert.equal(new TaskData({ title: 'a' }).encode(), '{"title":"a","tags":[],"completed":false}');
});

test('the capability module imports exactly the declared interfaces', () => {
  const text = capabilitiesModule(['websocket', 'settings', 'log'], '/sdk/src/capabilities.js');
  const imported = [...text.matchAll(/from 'kasm:handler\/([a-z]+)@0\.1\.0'/g)].map((m) => m[1]);
  assert.deepEqual(imported, ['websocket', 'settings', 'log']);
  assert.match(text, /export const producer = unreachable\("producer"/);
});

function project(files) {
  const root = mkdtempSync(join(tmpdir(), 'kasm-js-test-'));
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(join(root, name, '..'), { recursive: true });
    writeFileSync(join(root, name), text);
  }
  return root;
}

test('a project folder is read from package.json; flags win; bad keys are named', () => {
  const root = project({
    'package.json': JSON.stringify({ name: '@acme/welcome', kasm: { capabilities: ['producer'] } }),
    'handler.ts': 'export {};\n',
  });
  const found = resolveProject(root);
  assert.equal(found.name, 'welcome');
  assert.deepEqual(found.capabilities, ['producer', 'settings', 'log']);
  assert.match(found.main, /handler\.ts$/);
  assert.deepEqual(resolveProject(root, { capabilities: ['kv'] }).capabilities, ['kv', 'settings', 'log']);
  const bad = project({ 'package.json': JSON.stringify({ kasm: { capability: ['kv'] } }), 'handler.js': '' });
  assert.throws(() => resolveProject(bad), (e) => e instanceof BuildError && /unknown key\(s\) in "kasm": capability/.test(e.message));
  assert.throws(() => resolveProject(root, { capabilities: ['http'] }), /does not offer `http`/);
  assert.throws(() => resolveProject(join(root, 'nope.js')), /no such file or folder/);
});

test('the bundle keeps only the declared imports and the handler\'s own modules', async () => {
  const sdk = new URL('..', import.meta.url).pathname;
  const root = project({
    'handler.ts': "import { handler, publish } from 'kasm-guest';\nimport { shout } from './lib/shout.ts';\n" +
      "handler((e) => { publish('out', shout(e.text())); });\n",
    'lib/shout.ts': 'export const shout = (s: string): string => s.toUpperCase();\n',
  });
  mkdirSync(join(root, 'node_modules'));
  const { symlinkSync } = await import('node:fs');
  symlinkSync(sdk, join(root, 'node_modules', 'kasm-guest'));
  const out = await bundle(resolveProject(root, { capabilities: ['producer'] }));
  const imports = [...out.matchAll(/from "((?:kasm|wasi):[^"]+)"/g)].map((m) => m[1]).sort();
  assert.deepEqual(imports, ['kasm:handler/log@0.1.0', 'kasm:handler/producer@0.1.0', 'kasm:handler/settings@0.1.0']);
  assert.match(out, /toUpperCase/);
  const missing = project({ 'handler.js': "import 'left-pad';\n" });
  await assert.rejects(bundle(resolveProject(missing)), (e) => e instanceof BuildError && /left-pad/.test(e.message));
});

test('the guest section is a custom section naming JavaScript and the capabilities', () => {
  const bytes = guestSection({ capabilities: ['producer', 'settings', 'log'] });
  assert.equal(bytes[0], 0);
  const text = bytes.toString('utf8');
  assert.match(text, /kasm:guest\{"language":"javascript","sdk":"kasm-guest 0\.1\.0","toolchain":"componentize-js 0\.23\.0","capabilities":\["producer","settings","log"\]\}$/);
});

test('the version the SDK reports is the package\'s', () => {
  assert.equal(VERSION, SDK_VERSION);
});
