// Monitoring: the watched processes and their state, and the alarms, newest first, the
// active ones highlighted. Alarms follow `alarm.raised` / `alarm.cleared` as they happen; the
// count of active ones shows on the tab from any view. Processes are re-read every few
// seconds while the view is open; until the node answers `/api/processes`, the view says so.
// With another node selection (cluster.js) both lists cover those nodes, each row with its
// node; this node's alarm events then apply only when this node is part of the selection,
// and the alarms are read again with the processes.

import { ApiError, clearError, getJSON, queryString, showError } from './api.js';
import * as cluster from './cluster.js';
import { byId, el, replace } from './dom.js';
import * as events from './events.js';
import { bytes, count, dateTime, epochMs } from './format.js';
import { t } from './i18n.js';

const PROCESSES_EVERY_MS = 5000;
/** While the node has no `/api/processes`, asking again this rarely is enough. */
const ABSENT_EVERY_MS = 60000;
const ALARMS_SHOWN = 500;

/** Alarms by id. */
const alarms = new Map();
/** Ids raised since the page opened, to flash them once. */
const fresh = new Set();
/** The last `/api/processes` answer: null before one, 'absent' while the API has none. */
let processes = null;
let timer = null;
/** Bumped when the view opens or closes, so that a poll from an earlier opening stops. */
let generation = 0;

export function init() {
  events.on('alarm.raised', (alarm) => upsert(alarm, true));
  events.on('alarm.cleared', (alarm) => upsert(alarm, false));
  events.on('resync', loadAlarms);
  byId('alarm-active-only').addEventListener('change', renderAlarms);
  cluster.onChange(() => {
    processes = null;
    loadAlarms();
    loadProcesses();
  });
  loadAlarms();
}

export function show() {
  clearTimeout(timer);
  generation += 1;
  poll(generation);
  renderAlarms();
}

export function hide() {
  clearTimeout(timer);
  generation += 1;
}

async function poll(mine) {
  if (!cluster.isLocal()) await loadAlarms();
  await loadProcesses();
  if (mine === generation) {
    timer = setTimeout(() => poll(mine), processes === 'absent' ? ABSENT_EVERY_MS : PROCESSES_EVERY_MS);
  }
}

export function relabel() {
  renderProcesses();
  renderAlarms();
}

async function loadAlarms() {
  try {
    // The active ones whatever their age, and the recent history.
    const scope = cluster.scopeQuery();
    const [active, recent] = await Promise.all([getJSON(`/api/alarms?active=true&limit=1000${scope}`), getJSON(`/api/alarms?limit=${ALARMS_SHOWN}${scope}`)]);
    cluster.report('monitor', recent);
    alarms.clear();
    for (const a of [...(recent.items || []), ...(active.items || [])]) alarms.set(String(a.id), a);
    clearError('error.alarms');
  } catch (err) {
    showError('error.alarms', err);
  }
  renderAlarms();
}

function upsert(alarm, raised) {
  if (!alarm || alarm.id === undefined || !cluster.includesSelf()) return;
  const id = String(alarm.id);
  alarms.set(id, alarm);
  if (raised) fresh.add(id);
  renderAlarms();
}

async function loadProcesses() {
  try {
    const body = await getJSON(`/api/processes${queryString(cluster.scopeParams())}`);
    processes = Array.isArray(body) ? body : Array.isArray(body.items) ? body.items : [];
    clearError('error.processes');
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) processes = 'absent';
    else showError('error.processes', err);
  }
  renderProcesses();
}

/** The first of `names` that `p` has. */

function stateClass(state) {
  const s = String(state || '').toLowerCase();
  if (['running', 'ok', 'up'].includes(s)) return 'ok';
  if (['missing', 'down', 'stopped', 'dead'].includes(s)) return 'bad';
  return 'warn';
}

function renderProcesses() {
  const box = byId('processes');
  if (processes === null) {
    replace(box, el('div', { class: 'empty' }, t('loading')));
    return;
  }
  if (processes === 'absent') {
    replace(box, el('div', { class: 'empty' }, t('proc.absent')));
    return;
  }
  if (processes.length === 0) {
    replace(box, el('div', { class: 'empty' }, t('proc.none')));
    return;
  }
  const head = ['col.node', 'proc.name', 'proc.state', 'proc.pids', 'proc.cpu', 'proc.memory', 'proc.since'];
  replace(
    box,
    el(
      'div',
      { class: 'table-scroll' },
      el(
        'table',
        { class: 'grid processes' },
        el('caption', { class: 'sr-only' }, t('proc.title')),
        el('thead', {}, el('tr', {}, head.map((k) => el('th', { scope: 'col', class: k === 'col.node' ? 'node-col' : ['proc.cpu', 'proc.memory'].includes(k) ? 'num' : '' }, t(k))))),
        el(
          'tbody',
          {},
          processes.map((p) => {
            // The shape of /api/processes: name, matcher, pids, count, cpu_percent (null
            // until a second sample), rss_mb, state (unknown|ok|missing|over_limit),
            // critical, last_change.
            const state = p.state ?? '';
            const pids = p.pids;
            const cpu = p.cpu_percent;
            const mem = typeof p.rss_mb === 'number' ? p.rss_mb * 1024 * 1024 : undefined;
            const since = p.last_change;
            return el(
              'tr',
              { class: stateClass(state) === 'bad' ? 'row-bad' : '' },
              el('td', { class: 'node-col mono' }, p.node ?? ''),
              el('th', { scope: 'row', title: p.matcher ?? '' }, p.name ?? '—', p.critical ? el('span', { class: 'badge critical small' }, t('proc.critical')) : null),
              el('td', {}, el('span', { class: `badge proc-${stateClass(state)}` }, t(`proc.state.${String(state).toLowerCase()}`, { fallback: String(state) }))),
              el('td', { class: 'mono' }, Array.isArray(pids) ? pids.join(', ') || '—' : pids ?? '—'),
              el('td', { class: 'num mono' }, typeof cpu === 'number' ? `${cpu.toFixed(1)} %` : '—'),
              el('td', { class: 'num mono' }, typeof mem === 'number' ? bytes(mem) : '—'),
              el('td', { class: 'mono' }, since ? dateTime(since) : '—'),
            );
          }),
        ),
      ),
    ),
  );
}

function renderAlarms() {
  const onlyActive = byId('alarm-active-only').checked;
  const list = [...alarms.values()]
    .filter((a) => !onlyActive || !a.cleared_at)
    .sort((a, b) => epochMs(b.raised_at) - epochMs(a.raised_at))
    .slice(0, ALARMS_SHOWN);
  const rows = list.map((a) => {
    const active = !a.cleared_at;
    const id = String(a.id);
    const row = el(
      'tr',
      { class: `${active ? 'alarm-active' : 'alarm-cleared'} ${fresh.has(id) ? 'arrived' : ''}`, dataset: { id, active: String(active), node: a.node } },
      el('td', { class: 'node-col mono' }, a.node),
      el('td', {}, el('span', { class: `badge sev-${a.severity}` }, t(`severity.${a.severity}`, { fallback: a.severity }))),
      el('td', {}, t(`kind.${a.kind}`, { fallback: a.kind })),
      el('td', { class: 'mono' }, a.target),
      el('td', {}, a.message),
      el('td', { class: 'mono' }, dateTime(a.raised_at)),
      el('td', { class: 'mono' }, active ? el('span', { class: 'badge active-flag' }, t('alarm.active')) : dateTime(a.cleared_at)),
    );
    return row;
  });
  fresh.clear();
  replace(byId('alarm-rows'), rows);
  byId('alarms-empty').hidden = rows.length > 0;
  byId('alarms-empty').textContent = t(onlyActive ? 'alarm.none_active' : 'alarm.empty');
  const activeCount = [...alarms.values()].filter((a) => !a.cleared_at).length;
  const badge = byId('alarm-count');
  if (activeCount > Number(badge.dataset.count || 0) && badge.dataset.count !== undefined) {
    badge.classList.remove('bump');
    // Reflow, so that the animation starts again for each new alarm.
    void badge.offsetWidth;
    badge.classList.add('bump');
  }
  badge.dataset.count = String(activeCount);
  badge.hidden = activeCount === 0;
  badge.textContent = count(activeCount);
  badge.title = t('alarm.active_count', { n: activeCount });
}
