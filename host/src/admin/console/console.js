// The kasm console: pages over the admin API. Every read and every action is a request to
// /v1 with the token from this tab's sessionStorage, so the console can do exactly what the
// API lets the token do. Values from the server are put on the page as text, never as HTML.

const TOKEN_KEY = 'kasm-admin-token';
const REFRESH_MS = 3000;
const PAGE_SIZE = 25;
const KINDS = ['fatal', 'retries-exhausted', 'trap', 'timeout', 'out-of-memory', 'undecodable', 'retryable'];

const app = document.getElementById('app');
const nav = document.getElementById('nav');
const banner = document.getElementById('banner');
let refresh = null;
let generation = 0;

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/// A request to the admin server; the JSON answer, or an ApiError with the server's message.
async function api(method, path, body) {
  const headers = {};
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  let payload;
  if (body instanceof Blob) {
    payload = body;
    headers['Content-Type'] = 'application/wasm';
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers['Content-Type'] = 'application/json';
  }
  let r;
  try {
    r = await fetch(path, { method, headers, body: payload, cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, `the admin server did not answer (${e.message})`);
  }
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!r.ok) throw new ApiError(r.status, (data && data.error) || text || r.statusText);
  return data;
}

/// An element: h('a', {href: '#/'}, 'text', child...). Attributes starting with `on` are
/// listeners; strings become text nodes.
function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const SVG = 'http://www.w3.org/2000/svg';
function s(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

function short(sha) {
  return sha ? sha.slice(0, 12) : '—';
}

function when(ms) {
  if (ms === null || ms === undefined) return '—';
  return new Date(ms).toLocaleString();
}

function bytes(n) {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

function message(kind, text) {
  return h('div', { class: `message ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
}

/// Ask before an action; resolves true when confirmed.
function confirmAction(text, label) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = label;
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.returnValue = 'cancel';
    dialog.showModal();
  });
}

// ---- pages --------------------------------------------------------------------------------

function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] === 'health') return { page: 'health' };
  if (parts[0] === 'login') return { page: 'login' };
  if (parts[0] === 'handlers' && parts[1] && parts[2] === 'dead-letters') return { page: 'dead-letters', name: parts[1] };
  if (parts[0] === 'handlers' && parts[1]) return { page: 'handler', name: parts[1] };
  return { page: 'handlers' };
}

function drawNav(current, handlers) {
  const link = (href, label, page) =>
    h('a', { href, 'aria-current': current === page ? 'page' : null }, label);
  nav.replaceChildren(
    link('#/', 'Handlers', 'handlers'),
    link(handlers && handlers.length ? `#/handlers/${encodeURIComponent(handlers[0])}/dead-letters` : '#/', 'Dead letters', 'dead-letters'),
    link('#/health', 'Health', 'health'),
    token()
      ? h('button', { class: 'secondary', type: 'button', onclick: signOut }, 'Sign out')
      : h('a', { href: '#/login' }, 'Sign in'),
  );
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  location.hash = '#/login';
}

/// The sign-in form; `refused` says why it is shown.
function loginPage(refused) {
  drawNav('login');
  const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'current-password', required: true, 'aria-label': 'Admin token' });
  const status = h('div');
  const form = h('form', {
    onsubmit: async (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      try {
        await api('GET', '/v1/handlers');
        location.hash = '#/';
        render();
      } catch (e) {
        sessionStorage.removeItem(TOKEN_KEY);
        status.replaceChildren(message('error', e.status === 401 ? '401: that token was refused.' : e.message));
      }
    },
  },
  h('label', { for: 'token' }, 'Admin token (KASM_ADMIN_TOKEN)'),
  input,
  h('div', {}, h('button', { type: 'submit' }, 'Sign in')),
  status);
  app.replaceChildren(h('section', { class: 'login card' },
    refused ? h('h1', {}, '401 — sign in to see this page') : h('h1', {}, 'Sign in'),
    refused ? message('error', refused) : null,
    h('p', { class: 'muted' }, 'The token is kept in this browser tab only, and sent to this server with each request.'),
    form));
  input.focus();
}

function chart(activity) {
  const samples = activity.samples;
  const width = 600;
  const height = 64;
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: 'none', role: 'img' });
  const per = activity.interval_ms / 1000;
  const total = (x) => x.processed + x.skipped + x.dead_lettered + x.retried;
  const peak = Math.max(1, ...samples.map(total));
  const slot = width / 120;
  samples.forEach((x, i) => {
    const at = width - (samples.length - i) * slot;
    let y = height;
    for (const [cls, n] of [['ok', x.processed + x.skipped], ['retried', x.retried], ['dead', x.dead_lettered]]) {
      if (!n) continue;
      const bar = (n / peak) * (height - 4);
      y -= bar;
      svg.append(s('rect', { class: cls, x: at, y, width: Math.max(1, slot - 1), height: bar }));
    }
  });
  const last = samples.length ? samples[samples.length - 1] : null;
  const rate = last ? ((last.processed + last.skipped) / per).toFixed(1) : '0';
  const label = `${rate} records/s in the last ${per} s; ${samples.length} intervals of ${per} s shown`;
  svg.setAttribute('aria-label', label);
  return h('div', {},
    svg,
    h('div', { class: 'legend' },
      h('span', { class: 'rate' }, `${rate} records/s`),
      h('span', {}, h('i', { class: 'ok' }), 'handled'),
      h('span', {}, h('i', { class: 'retried' }), 'retried'),
      h('span', {}, h('i', { class: 'dead' }), 'dead-lettered'),
      h('span', {}, `last ${Math.round((samples.length * per) / 60 * 10) / 10} min`)));
}

function partitionsTable(partitions) {
  const rows = Object.entries(partitions);
  if (!rows.length) return h('p', { class: 'muted' }, 'No partitions assigned.');
  return h('div', { class: 'table-wrap' }, h('table', {},
    h('thead', {}, h('tr', {}, h('th', {}, 'Partition'), h('th', { class: 'num' }, 'Committed'), h('th', { class: 'num' }, 'Lag'), h('th', { class: 'num' }, 'In flight'), h('th', {}, ''))),
    h('tbody', {}, rows.map(([tp, p]) => h('tr', {},
      h('td', { class: 'mono' }, tp),
      h('td', { class: 'num' }, p.committed ?? '—'),
      h('td', { class: 'num' }, p.lag ?? '—'),
      h('td', { class: 'num' }, p.in_flight),
      h('td', {}, p.paused ? 'paused' : ''))))));
}

async function setPaused(name, paused, status) {
  try {
    await api('POST', `/v1/handlers/${encodeURIComponent(name)}/${paused ? 'pause' : 'resume'}`);
    await render();
  } catch (e) {
    if (e.status === 401) return loginPage(e.message);
    status.replaceChildren(message('error', `${paused ? 'Pause' : 'Resume'} refused (${e.status}): ${e.message}`));
  }
}

function handlerCard(v) {
  const status = h('div');
  const paused = v.status === 'paused';
  const c = v.counters;
  return h('article', { class: 'card handler', 'data-handler': v.name },
    h('div', { class: 'card-head' },
      h('div', { class: 'title' },
        h('h2', {}, h('a', { href: `#/handlers/${encodeURIComponent(v.name)}` }, v.name)),
        h('span', { class: `badge ${v.status}`, 'data-status': v.status }, v.status)),
      h('button', { type: 'button', class: paused ? '' : 'secondary', onclick: () => setPaused(v.name, !paused, status) }, paused ? 'Resume' : 'Pause')),
    status,
    h('dl', { class: 'kv' },
      h('dt', {}, 'Version'), h('dd', { class: 'mono', 'data-version': v.active_version.sha256 }, short(v.active_version.sha256)),
      h('dt', {}, 'Topics'), h('dd', {}, v.topics.join(', ')),
      h('dt', {}, 'Group'), h('dd', { class: 'mono' }, v.group_id),
      h('dt', {}, 'Outcomes'), h('dd', {}, `${c.processed} handled · ${c.skipped} skipped · ${c.retried} retried · ${c.dead_lettered} dead-lettered · ${c.published} published`)),
    chart(v.activity),
    h('h3', {}, 'Partitions'),
    partitionsTable(v.partitions),
    h('div', { class: 'row' },
      h('a', { class: 'button secondary', href: `#/handlers/${encodeURIComponent(v.name)}` }, 'Versions and deploy'),
      h('a', { class: 'button secondary', href: `#/handlers/${encodeURIComponent(v.name)}/dead-letters` }, 'Dead letters')));
}

async function handlersPage() {
  const list = await api('GET', '/v1/handlers');
  drawNav('handlers', list.map((v) => v.name));
  app.replaceChildren(h('h1', {}, 'Handlers'), h('div', { class: 'grid' }, list.map(handlerCard)));
  return true;
}

function historyTable(history) {
  return h('div', { class: 'table-wrap' }, h('table', { id: 'history' },
    h('thead', {}, h('tr', {}, h('th', {}, 'When'), h('th', {}, 'How'), h('th', {}, 'From'), h('th', {}, 'To'), h('th', {}, 'First offset per partition'))),
    h('tbody', {}, history.slice().reverse().map((x) => h('tr', { 'data-to': x.to },
      h('td', {}, when(x.at_ms)),
      h('td', {}, x.reason),
      h('td', { class: 'mono' }, short(x.from)),
      h('td', { class: 'mono' }, short(x.to)),
      h('td', { class: 'mono' }, Object.keys(x.first_offsets).length
        ? Object.entries(x.first_offsets).map(([tp, o]) => `${tp}: ${o}`).join(', ')
        : 'not yet')))))); 
}

async function handlerPage(name) {
  const v = await api('GET', `/v1/handlers/${encodeURIComponent(name)}`);
  drawNav('handler', [name]);
  const result = h('div', { id: 'deploy-result' });
  const file = h('input', { type: 'file', id: 'component', accept: '.wasm,application/wasm', 'aria-label': 'Component file' });
  const deploy = h('button', {
    type: 'button',
    id: 'deploy',
    onclick: async () => {
      const f = file.files && file.files[0];
      if (!f) {
        result.replaceChildren(message('error', 'Choose a .wasm component first.'));
        return;
      }
      deploy.disabled = true;
      result.replaceChildren(message('ok', `Deploying ${f.name} (${bytes(f.size)}): validating and compiling…`));
      try {
        const r = await api('PUT', `/v1/handlers/${encodeURIComponent(name)}/component`, f);
        await handlerPage(name);
        document.getElementById('deploy-result').replaceChildren(message('ok',
          `Deployed ${short(r.active)} (was ${short(r.previous)}): ${r.load === 'cached' ? 'from the artifact cache' : 'compiled'} in ${Math.round(r.compile_ms)} ms, switched in ${Math.round(r.swap_us)} µs.`));
      } catch (e) {
        if (e.status === 401) return loginPage(e.message);
        deploy.disabled = false;
        result.replaceChildren(message('error', `Refused (${e.status}): ${e.message}. The active version ${short(v.active_version.sha256)} keeps serving.`));
      }
    },
  }, 'Deploy');
  const rollback = h('button', {
    type: 'button',
    class: 'secondary',
    id: 'rollback',
    onclick: async () => {
      if (!(await confirmAction(`Roll ${name} back to the version before ${short(v.active_version.sha256)}? Records in flight finish on the current version.`, 'Roll back'))) return;
      try {
        const r = await api('POST', `/v1/handlers/${encodeURIComponent(name)}/rollback`);
        await handlerPage(name);
        document.getElementById('deploy-result').replaceChildren(message('ok', `Rolled back to ${short(r.active)}.`));
      } catch (e) {
        if (e.status === 401) return loginPage(e.message);
        result.replaceChildren(message('error', `Rollback refused (${e.status}): ${e.message}`));
      }
    },
  }, 'Roll back');
  app.replaceChildren(
    h('h1', {}, `Handler ${v.name}`),
    h('section', { class: 'card' },
      h('div', { class: 'card-head' }, h('h2', {}, 'Active version'), h('span', { class: `badge ${v.status}` }, v.status)),
      h('dl', { class: 'kv' },
        h('dt', {}, 'sha256'), h('dd', { class: 'mono', id: 'active-version' }, v.active_version.sha256),
        h('dt', {}, 'Size'), h('dd', {}, bytes(v.active_version.size)),
        h('dt', {}, 'Capabilities'), h('dd', {}, v.active_version.capabilities.join(', ') || 'none'),
        h('dt', {}, 'Topics'), h('dd', {}, v.topics.join(', '))),
      h('h3', {}, 'Deploy a new version'),
      h('div', { class: 'row' }, file, deploy, rollback),
      result,
      h('h3', {}, 'Version history (newest first)'),
      historyTable(v.history),
      h('div', { class: 'row' }, h('a', { class: 'button secondary', href: `#/handlers/${encodeURIComponent(name)}/dead-letters` }, 'Dead letters'))));
  return false;
}

function deadLetterRow(d, selected, changed) {
  const p = d.provenance;
  const key = `${d.partition}:${d.offset}`;
  const box = h('input', { type: 'checkbox', 'aria-label': `select ${key}`, checked: selected.has(key), onchange: (ev) => {
    if (ev.target.checked) selected.set(key, d);
    else selected.delete(key);
    changed();
  } });
  return h('tr', { 'data-event-id': p.event_id || '', 'data-kind': p.error_kind || '' },
    h('td', {}, box),
    h('td', { class: 'mono nowrap' }, key),
    h('td', {}, when(d.timestamp_ms)),
    h('td', { class: 'mono nowrap' }, p.event_id || '—'),
    h('td', {}, h('span', { class: 'badge bad' }, p.error_kind || 'unknown')),
    h('td', { class: 'reason' }, p.error_message || ''),
    h('td', { class: 'num' }, p.attempts ?? '—'),
    h('td', { class: 'num' }, d.replay_count),
    h('td', {},
      h('div', { class: 'mono' }, `${p.source_topic ?? '?'}/${p.source_partition ?? '?'} @ ${p.source_offset ?? '?'}`),
      h('details', {}, h('summary', {}, `payload (${bytes(d.payload_bytes)}${d.payload_encoding === 'hex' ? ', hex' : ''}${d.payload_truncated ? ', preview' : ''})`),
        h('pre', { class: 'payload' }, d.payload_encoding === 'utf8' && !d.payload_truncated ? pretty(d.payload) : d.payload))));
}

function pretty(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

async function deadLettersPage(name) {
  const v = await api('GET', `/v1/handlers/${encodeURIComponent(name)}`);
  const all = await api('GET', '/v1/handlers');
  drawNav('dead-letters', all.map((x) => x.name));
  const params = new URLSearchParams(location.search);
  const state = { topic: params.get('topic') || v.topics[0], kind: '', records: [], next: null };
  const selected = new Map();
  const body = h('tbody');
  const status = h('div', { id: 'replay-result' });
  const count = h('span', { class: 'muted', id: 'selected-count' }, '0 selected');
  const replay = h('button', { type: 'button', id: 'replay', disabled: true }, 'Replay selected');
  const more = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Load more');
  const shownCount = h('span', { class: 'muted' });
  const changed = () => {
    count.textContent = `${selected.size} selected`;
    replay.disabled = selected.size === 0;
  };
  const shown = () => state.records.filter((d) => !state.kind || d.provenance.error_kind === state.kind);
  const draw = () => {
    const rows = shown();
    body.replaceChildren(...(rows.length
      ? rows.map((d) => deadLetterRow(d, selected, changed))
      : [h('tr', {}, h('td', { colspan: 9, class: 'muted' }, 'No dead letters here.'))]));
    more.hidden = !state.next;
    shownCount.textContent = `${rows.length} shown${state.next ? ', more to load' : ''}`;
  };
  const load = async (fresh) => {
    const q = new URLSearchParams({ limit: String(PAGE_SIZE), topic: state.topic });
    if (!fresh && state.next) q.set('from', state.next);
    const page = await api('GET', `/v1/handlers/${encodeURIComponent(name)}/dlq?${q}`);
    state.records = fresh ? page.records : state.records.concat(page.records);
    state.next = page.next;
    draw();
  };
  more.addEventListener('click', () => load(false).catch((e) => status.replaceChildren(message('error', e.message))));
  replay.addEventListener('click', async () => {
    const n = selected.size;
    const ok = await confirmAction(
      `Replay ${n} dead letter${n === 1 ? '' : 's'} of ${name} to ${state.topic}? Loop guard: a record is replayed at most ${v.max_replays} times (max_replays); one replayed that often already is refused.`,
      `Replay ${n}`);
    if (!ok) return;
    try {
      const positions = [...selected.values()].map((d) => ({ partition: d.partition, offset: d.offset }));
      const r = await api('POST', `/v1/handlers/${encodeURIComponent(name)}/dlq/replay`, { records: positions, topic: state.topic });
      selected.clear();
      changed();
      const lines = [
        `Replayed ${r.replayed.length}: ${r.replayed.map((x) => `${x.event_id ?? '?'} → ${x.topic}/${x.partition} @ ${x.offset} (replay ${x.replay_count})`).join(', ') || 'none'}.`,
      ];
      if (r.refused.length) lines.push(`Refused ${r.refused.length}: ${r.refused.map((x) => `${x.dlq_partition}:${x.dlq_offset} ${x.reason}`).join('; ')}.`);
      if (r.stopped) lines.push(`Stopped: ${r.stopped}.`);
      status.replaceChildren(message(r.refused.length || r.stopped ? 'error' : 'ok', lines.join(' ')));
      await load(true);
    } catch (e) {
      if (e.status === 401) return loginPage(e.message);
      status.replaceChildren(message('error', `Replay refused (${e.status}): ${e.message}`));
    }
  });
  const kinds = h('select', { id: 'kind', 'aria-label': 'Error kind', onchange: (ev) => { state.kind = ev.target.value; draw(); } },
    h('option', { value: '' }, 'every kind'), KINDS.map((k) => h('option', { value: k }, k)));
  const topics = h('select', { id: 'topic', 'aria-label': 'Source topic', onchange: (ev) => { state.topic = ev.target.value; selected.clear(); load(true); } },
    v.topics.map((t) => h('option', { value: t, selected: t === state.topic }, `${t} → ${t}.dlq`)));
  const handlers = h('select', { id: 'handler', 'aria-label': 'Handler', onchange: (ev) => { location.hash = `#/handlers/${encodeURIComponent(ev.target.value)}/dead-letters`; } },
    all.map((x) => h('option', { value: x.name, selected: x.name === name }, x.name)));
  app.replaceChildren(
    h('h1', {}, `Dead letters of ${name}`),
    h('section', { class: 'card' },
      h('div', { class: 'row' }, handlers, topics, kinds),
      h('div', { class: 'row' },
        h('button', { type: 'button', class: 'secondary', onclick: () => {
          for (const d of shown()) selected.set(`${d.partition}:${d.offset}`, d);
          draw();
          changed();
        } }, 'Select all shown'),
        replay, count),
      status,
      h('div', { class: 'table-wrap' }, h('table', { id: 'dead-letters' },
        h('thead', {}, h('tr', {}, h('th', {}, ''), h('th', {}, 'Position'), h('th', {}, 'Written'), h('th', {}, 'Event id'), h('th', {}, 'Kind'), h('th', {}, 'Reason'), h('th', { class: 'num' }, 'Attempts'), h('th', { class: 'num' }, 'Replays'), h('th', {}, 'Source and payload'))),
        body)),
      h('div', { class: 'row' }, more, shownCount)));
  await load(true);
  return false;
}

function healthWords(name, r) {
  const parts = [];
  parts.push(r.live ? 'live' : 'not live');
  parts.push(r.ready ? 'ready' : 'not ready');
  const state = typeof r.state === 'string' ? r.state : Object.keys(r.state || {})[0] || 'unknown';
  let sentence = `${name} is ${parts.join(' and ')}: consumer loop ${state}${r.reason ? ` (${r.reason})` : ''}, ${r.assigned_partitions} partition${r.assigned_partitions === 1 ? '' : 's'} assigned, broker ${r.broker_reachable ? 'reachable' : 'unreachable'}`;
  if (r.broker_error) sentence += ` (${r.broker_error})`;
  return `${sentence}.`;
}

async function fetchHealth(path) {
  const r = await fetch(path, { cache: 'no-store' });
  return { ok: r.ok, status: r.status, report: await r.json() };
}

async function healthPage() {
  // The probes are open; the console's page is not: the token is checked like on every page.
  const handlers = await api('GET', '/v1/handlers');
  const [live, ready] = await Promise.all([fetchHealth('/healthz'), fetchHealth('/readyz')]);
  drawNav('health', handlers.map((x) => x.name));
  const overall = h('dl', { class: 'kv' },
    h('dt', {}, '/healthz'), h('dd', {}, h('span', { class: `badge ${live.ok ? 'yes' : 'bad'}`, id: 'live' }, live.ok ? 'live' : 'not live'), ` (${live.status})`),
    h('dt', {}, '/readyz'), h('dd', {}, h('span', { class: `badge ${ready.ok ? 'yes' : 'no'}`, id: 'ready' }, ready.ok ? 'ready' : 'not ready'), ` (${ready.status})`),
    h('dt', {}, 'Shutting down'), h('dd', {}, ready.report.shutting_down ? 'yes: not taking new work' : 'no'));
  const cards = Object.entries(ready.report.handlers || {}).map(([name, r]) => h('article', { class: 'card', 'data-handler': name },
    h('div', { class: 'card-head' }, h('h2', {}, name),
      h('span', { class: `badge ${r.ready ? 'yes' : 'no'}` }, r.ready ? 'ready' : 'not ready')),
    h('p', { class: 'words' }, healthWords(name, r)),
    r.problems && r.problems.length
      ? h('ul', { class: 'problems' }, r.problems.map((p) => h('li', {}, p)))
      : h('p', { class: 'muted' }, 'No problems.')));
  app.replaceChildren(h('h1', {}, 'Health'), h('section', { class: 'card' }, overall), h('h3', {}, 'Per handler'), h('div', { class: 'grid' }, cards));
  return true;
}

/// Draw the page the URL names; pages that show live numbers are drawn again every few
/// seconds. A 401 from the API shows the sign-in form instead of the page.
async function render() {
  const mine = ++generation;
  clearTimeout(refresh);
  const r = route();
  try {
    if (r.page === 'login') return loginPage(null);
    let again = false;
    if (r.page === 'handlers') again = await handlersPage();
    else if (r.page === 'handler') again = await handlerPage(r.name);
    else if (r.page === 'dead-letters') again = await deadLettersPage(r.name);
    else if (r.page === 'health') again = await healthPage();
    banner.hidden = Boolean(token());
    banner.textContent = token() ? '' : 'Not signed in: this server has no admin token (KASM_ADMIN_TOKEN), so its API is read-only and the console shows it read-only.';
    if (again && mine === generation) refresh = setTimeout(() => { if (mine === generation) render(); }, REFRESH_MS);
  } catch (e) {
    if (mine !== generation) return;
    if (e.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      return loginPage(token() === null && e.message ? `401 Unauthorized: ${e.message}.` : e.message);
    }
    app.replaceChildren(h('h1', {}, 'Something went wrong'), message('error', e.status ? `${e.status}: ${e.message}` : e.message));
  }
}

window.addEventListener('hashchange', render);
render();
