// Live calls: every call in progress, kept current by the `call.*` events. A call appears on
// call.started, changes on call.ringing / call.answered, and leaves on call.ended (after a
// short fade, so the eye can follow it). After every (re)connect the list is reloaded from
// `/api/calls/live`; events that arrive meanwhile are applied after the reload, in order.
// The events are this node's own: with another node selection (cluster.js) the list is read
// again every couple of seconds instead, each call labelled with its node.

import { getJSON, clearError, queryString, showError } from './api.js';
import * as cluster from './cluster.js';
import { byId, el, replace } from './dom.js';
import * as events from './events.js';
import { clock, dateTime, duration, epochMs, serverNow, count } from './format.js';
import { t } from './i18n.js';

/** How long an ended call stays on screen, faded, before it leaves. */
const FADE_MS = 1500;
/** Ids of ended calls remembered, so that a late event cannot bring one back. */
const ENDED_KEPT = 2000;
/** How often the list of other nodes' calls is read again. */
const CLUSTER_EVERY_MS = 2000;

/** Calls on screen by id: { call, row, cells, ending }. */
const calls = new Map();
/** Ended ids, oldest first. */
const ended = new Set();
/** Events held while a reload is in flight; null when none is. */
let held = null;
/** Another reload was asked for while one was in flight. */
let again = false;
let visible = false;
/** What the operator typed in the filter box. */
let filter = '';

export function init() {
  for (const name of ['call.started', 'call.ringing', 'call.answered', 'call.ended']) {
    events.on(name, (call) => apply(name, call));
  }
  events.on('resync', reload);
  byId('live-filter').addEventListener('input', (event) => {
    filter = event.target.value.trim();
    for (const entry of calls.values()) applyFilter(entry);
    summarize();
  });
  cluster.onChange(() => {
    for (const id of [...calls.keys()]) remove(id);
    ended.clear();
    reload();
  });
  reload();
  setInterval(tick, 1000);
  setInterval(() => {
    if (!cluster.isLocal() && !document.hidden) reload();
  }, CLUSTER_EVERY_MS);
}

export function show() {
  visible = true;
  tick();
}

export function hide() {
  visible = false;
}

/** The call in progress with this id, as the live view knows it, or null. */
export function liveCall(id) {
  const entry = calls.get(String(id));
  return entry && !entry.ending ? entry.call : null;
}

export function relabel() {
  for (const entry of calls.values()) fill(entry);
  summarize();
}

async function reload() {
  if (held) {
    again = true;
    return;
  }
  held = [];
  try {
    const body = await getJSON(`/api/calls/live${queryString(cluster.scopeParams())}`);
    cluster.report('live', body);
    const items = Array.isArray(body.items) ? body.items : [];
    const present = new Set(items.map((c) => String(c.id)));
    for (const [id, entry] of calls) if (!present.has(id) && !entry.ending) remove(id);
    for (const call of items) upsert(call, false);
    clearError('error.live');
  } catch (err) {
    showError('error.live', err);
  } finally {
    const pending = held;
    held = null;
    for (const [name, call] of pending) apply(name, call);
    summarize();
    if (again) {
      again = false;
      reload();
    }
  }
}

function apply(name, call) {
  if (!call || call.id === undefined || !cluster.isLocal()) return;
  if (held) {
    held.push([name, call]);
    return;
  }
  if (name === 'call.ended' || call.state === 'ended') end(call);
  else upsert(call, name === 'call.started');
  summarize();
}

function upsert(call, fresh) {
  const id = String(call.id);
  if (ended.has(id)) return;
  let entry = calls.get(id);
  if (!entry) {
    entry = build(id);
    calls.set(id, entry);
    if (fresh) entry.row.classList.add('arrived');
  }
  entry.call = call;
  fill(entry);
  place(entry);
  applyFilter(entry);
}

function applyFilter(entry) {
  const c = entry.call || {};
  entry.row.hidden = filter !== '' && ![c.caller, c.called, c.terminal].some((v) => String(v || '').includes(filter));
}

function end(call) {
  const id = String(call.id);
  ended.add(id);
  if (ended.size > ENDED_KEPT) ended.delete(ended.values().next().value);
  const entry = calls.get(id);
  if (!entry || entry.ending) return;
  entry.call = { ...entry.call, ...call, state: 'ended' };
  entry.ending = true;
  fill(entry);
  entry.row.classList.add('leaving');
  setTimeout(() => {
    remove(id);
    summarize();
  }, FADE_MS);
}

function remove(id) {
  const entry = calls.get(id);
  if (entry) entry.row.remove();
  calls.delete(id);
}

function build(id) {
  const cells = {
    start: el('td', { class: 'mono' }),
    caller: el('td', { class: 'mono strong' }),
    called: el('td', { class: 'mono strong' }),
    type: el('td'),
    state: el('td'),
    elapsed: el('td', { class: 'num mono' }),
    talk: el('td', { class: 'num mono' }),
    terminal: el('td', { class: 'mono muted' }),
    node: el('td', { class: 'node-col mono' }),
    action: el('td', { class: 'actions' }),
  };
  const row = el('tr', { dataset: { id } }, Object.values(cells));
  return { call: null, row, cells, ending: false };
}

/** Newest first: the row goes before the first row that started earlier. */
function place(entry) {
  const tbody = byId('live-rows');
  if (entry.row.parentNode === tbody) return;
  const start = epochMs(entry.call.start_time);
  for (const other of tbody.children) {
    const o = calls.get(other.dataset.id);
    if (o && epochMs(o.call.start_time) < start) {
      tbody.insertBefore(entry.row, other);
      return;
    }
  }
  tbody.append(entry.row);
}

export function typeBadge(type) {
  return el('span', { class: `badge type-${type}` }, t(`type.${type}`));
}

function fill(entry) {
  const { call, cells } = entry;
  cells.node.textContent = call.node || '';
  replace(cells.start, el('time', { datetime: String(call.start_time), title: dateTime(call.start_time) }, clock(call.start_time)));
  cells.caller.textContent = call.caller || '—';
  cells.caller.title = call.caller_uri || '';
  cells.called.textContent = call.called || '—';
  cells.called.title = call.called_uri || '';
  replace(cells.type, typeBadge(call.call_type || 'audio'));
  replace(cells.state, el('span', { class: `badge state-${call.state}` }, t(`state.${call.state}`)));
  cells.terminal.textContent = call.terminal || '';
  if (!cells.action.firstChild) {
    cells.action.append(el('a', { class: 'button small secondary', href: `#/log/${encodeURIComponent(entry.row.dataset.id)}${cluster.recordSuffix(call.node)}` }));
  }
  cells.action.firstChild.textContent = t('action.view_log');
  cells.action.firstChild.setAttribute('aria-label', `${t('action.view_log')} ${call.caller || ''} → ${call.called || ''}`);
  times(entry);
}

function times(entry) {
  if (entry.ending) return;
  const now = serverNow();
  const start = epochMs(entry.call.start_time);
  const answer = epochMs(entry.call.answer_time);
  entry.cells.elapsed.textContent = Number.isNaN(start) ? '—' : duration((now - start) / 1000);
  entry.cells.talk.textContent = Number.isNaN(answer) ? '—' : duration((now - answer) / 1000);
}

function tick() {
  if (!visible) return;
  for (const entry of calls.values()) times(entry);
}

function summarize() {
  const active = [...calls.values()].filter((e) => !e.ending).map((e) => e.call);
  const ringing = active.filter((c) => c.state === 'trying' || c.state === 'ringing').length;
  const connected = active.filter((c) => c.state === 'connected').length;
  const video = active.filter((c) => c.call_type === 'video').length;
  const tile = (key, value, cls) =>
    el('div', { class: `tile ${cls}` }, el('div', { class: 'tile-label' }, t(key)), el('div', { class: 'tile-value', dataset: { tile: key } }, count(value)));
  replace(
    byId('live-tiles'),
    tile('live.total', active.length, 'accent'),
    tile('live.ringing', ringing, 'amber'),
    tile('live.connected', connected, 'green'),
    tile('live.video', video, 'violet'),
  );
  const shown = [...calls.values()].filter((e) => !e.row.hidden).length;
  byId('live-empty').hidden = shown > 0;
  byId('live-empty').textContent = t(calls.size > 0 ? 'live.no_match' : 'live.empty');
  const badge = byId('live-count');
  badge.hidden = active.length === 0;
  badge.textContent = count(active.length);
}
