// Query: the source document's form (start, end, call type, caller, called, connection
// status) with its defaults, the matching records page by page, the totals per call type,
// the bar chart, the statistics, and a CSV download of exactly the query on screen. The query
// lives in the URL (`#/query?start=…`), so it can be bookmarked, shared and reloaded. With a
// node selection other than this node (cluster.js), the same query covers those nodes; the
// CSV export then stays off, since it covers this node only.

import { clearError, getJSON, queryString, showError } from './api.js';
import { byId, el, replace } from './dom.js';
import * as chart from './chart.js';
import * as cluster from './cluster.js';
import { count, dateTime, duration, normalizeTime, percent, wall } from './format.js';
import { t } from './i18n.js';
import { typeBadge } from './live.js';

const FIELDS = ['start', 'end', 'type', 'caller', 'called', 'status'];
const PAGE_SIZE = 100;
/** How often "refresh every minute" re-runs the query on screen. */
const AUTO_EVERY_MS = 60000;

/** The query on screen: its filter parameters (API names), as a canonical string too. */
let shown = null;
let shownKey = null;
/** The last answers, kept to re-render on a language change. */
let lastStats = null;
let lastPage = null;
/** Cursors of the pages seen: `cursors[i]` fetches page i (null for the first). */
let cursors = [null];
let page = 0;
/** The node's today (`YYYY-MM-DD`), from the API's default interval. */
let nodeToday = null;
let inflight = null;

export function init() {
  byId('query-form').addEventListener('submit', (event) => {
    event.preventDefault();
    submit();
  });
  byId('q-reset').addEventListener('click', () => {
    byId('query-form').reset();
    setRange(0, 1);
  });
  for (const button of document.querySelectorAll('[data-range]')) {
    button.addEventListener('click', () => {
      const [from, to] = { today: [0, 1], yesterday: [-1, 0], week: [-6, 1] }[button.dataset.range];
      setRange(from, to);
    });
  }
  for (const name of ['start', 'end']) {
    byId(`q-${name}`).addEventListener('input', (event) => event.target.setCustomValidity(''));
  }
  chart.legend(byId('chart-legend'));
  cluster.onChange(() => {
    if (shown) {
      shownKey = null;
      run(shown);
    }
  });
  setInterval(() => {
    if (byId('q-auto').checked && shown && !byId('page-query').hidden && !document.hidden && page === 0) {
      shownKey = null;
      run(shown);
    }
  }, AUTO_EVERY_MS);
}

export function relabel() {
  chart.legend(byId('chart-legend'));
  if (lastStats) renderStats(lastStats);
  if (lastPage) renderPage(lastPage);
}

/** `YYYY-MM-DD` plus `days`. */
function addDays(date, days) {
  const [y, m, d] = date.split('-').map(Number);
  return new Date(Date.UTC(y, m - 1, d + days)).toISOString().slice(0, 10);
}

/** Narrows the query to one bucket of the chart, keeping the other conditions. */
function zoom(start, end) {
  byId('q-start').value = dateTime(start);
  byId('q-end').value = dateTime(end);
  submit();
}

function setRange(fromDays, toDays) {
  if (!nodeToday) return;
  byId('q-start').value = `${addDays(nodeToday, fromDays)} 00:00:00`;
  byId('q-end').value = `${addDays(nodeToday, toDays)} 00:00:00`;
  submit();
}

function formParams() {
  const params = {};
  for (const name of FIELDS) {
    const input = byId(`q-${name}`);
    params[name] = name === 'start' || name === 'end' ? normalizeTime(input.value) ?? input.value.trim() : input.value.trim();
  }
  return params;
}

function fillForm(params) {
  for (const name of FIELDS) {
    const input = byId(`q-${name}`);
    const value = params.get(name) || '';
    input.value = value;
  }
}

function submit() {
  const params = formParams();
  for (const name of ['start', 'end']) {
    const input = byId(`q-${name}`);
    const value = input.value.trim();
    input.setCustomValidity(!value ? t('q.required') : normalizeTime(value) ? '' : t('q.bad_time'));
    if (normalizeTime(value)) input.value = normalizeTime(value);
  }
  if (normalizeTime(params.start) && normalizeTime(params.end) && params.end <= params.start) {
    byId('q-end').setCustomValidity(t('q.end_after_start'));
  }
  const form = byId('query-form');
  if (!form.reportValidity()) return;
  const hash = `#/query${queryString(params)}`;
  if (location.hash === hash) run(params);
  else location.hash = hash;
}

export async function show(_rest, params) {
  if ((!params.get('start') || !params.get('end')) && shown) {
    // Back from another view through the tab: the query on screen stays.
    history.replaceState(null, '', `#/query${shownKey}`);
    return;
  }
  if (!params.get('start') || !params.get('end')) {
    // The document's defaults are the API's: ask it for today in the node's zone.
    try {
      const defaults = await getJSON('/api/stats');
      nodeToday = wall(defaults.start)?.date ?? null;
      const start = dateTime(defaults.start);
      const end = dateTime(defaults.end);
      const rest = Object.fromEntries(FIELDS.map((f) => [f, params.get(f) || '']));
      history.replaceState(null, '', `#/query${queryString({ ...rest, start, end })}`);
      show('', new URLSearchParams(queryString({ ...rest, start, end }).slice(1)));
    } catch (err) {
      showError('error.query', err);
    }
    return;
  }
  const wanted = Object.fromEntries(FIELDS.map((f) => [f, params.get(f) || '']));
  const key = queryString(wanted);
  if (key === shownKey) return;
  fillForm(params);
  run(wanted);
}

async function run(params) {
  if (!nodeToday) nodeToday = await todayOfNode();
  if (inflight) inflight.abort();
  const controller = new AbortController();
  inflight = controller;
  const results = byId('query-results');
  results.setAttribute('aria-busy', 'true');
  const qs = queryString(params);
  const scoped = queryString({ ...params, ...cluster.scopeParams() });
  try {
    const [stats, first] = await Promise.all([
      getJSON(`/api/stats${scoped}`, { signal: controller.signal }),
      getJSON(`/api/cdrs${scoped}${scoped ? '&' : '?'}limit=${PAGE_SIZE}`, { signal: controller.signal }),
    ]);
    shown = params;
    shownKey = qs;
    cursors = [null];
    page = 0;
    lastStats = stats;
    lastPage = first;
    byId('q-csv').href = `/api/cdrs.csv${qs}`;
    byId('q-csv').hidden = !cluster.isLocal();
    byId('q-csv-cluster').hidden = cluster.isLocal();
    cluster.report('query', {
      nodes: first.nodes,
      unavailable: [...new Set([...(first.unavailable || []), ...(stats.unavailable || [])])],
    });
    renderStats(stats);
    renderPage(first);
    clearError('error.query');
  } catch (err) {
    showError('error.query', err);
  } finally {
    if (inflight === controller) {
      inflight = null;
      results.setAttribute('aria-busy', 'false');
    }
  }
}

/** The node's today, from the API's default interval (for the quick ranges). */
async function todayOfNode() {
  try {
    const defaults = await getJSON('/api/stats');
    return wall(defaults.start)?.date ?? null;
  } catch {
    return null;
  }
}

async function goTo(target) {
  if (!shown || target < 0 || target >= cursors.length) return;
  const qs = queryString({ ...shown, ...cluster.scopeParams(), limit: PAGE_SIZE, cursor: cursors[target] });
  try {
    const body = await getJSON(`/api/cdrs${qs}`);
    page = target;
    lastPage = body;
    cluster.report('query', body);
    renderPage(body);
    byId('records').scrollIntoView({ block: 'start', behavior: 'smooth' });
    clearError('error.query');
  } catch (err) {
    showError('error.query', err);
  }
}

function tile(label, value, cls, field) {
  return el('div', { class: `tile ${cls}` }, el('div', { class: 'tile-label' }, label), el('div', { class: 'tile-value', dataset: { total: field } }, value));
}

function renderStats(stats) {
  const totals = stats.totals || {};
  const all = totals.all || {};
  replace(
    byId('q-summary'),
    el('span', { class: 'mono' }, `${dateTime(stats.start)} → ${dateTime(stats.end)}`),
    el('span', { class: 'muted' }, ` · ${t('q.found', { n: count(all.calls ?? 0) })}`),
  );
  replace(
    byId('q-totals'),
    tile(t('totals.audio_talk'), duration(totals.audio?.talk_s), 'accent', 'audio.talk_s'),
    tile(t('totals.video_talk'), duration(totals.video?.talk_s), 'violet', 'video.talk_s'),
    tile(t('totals.calls'), count(all.calls), 'plain', 'all.calls'),
    tile(t('totals.connect_rate'), percent(all.connect_rate), 'green', 'all.connect_rate'),
  );
  byId('q-csv').title = t('q.csv_title', { n: count(all.calls ?? 0) });
  byId('chart-title').textContent = t(stats.bucket === 'hour' ? 'chart.title_hour' : 'chart.title_day');
  chart.render(byId('chart'), stats, zoom);

  const cols = ['calls', 'connected', 'connect_rate', 'talk_s', 'avg_talk_s'];
  const fmt = { calls: count, connected: count, connect_rate: percent, talk_s: duration, avg_talk_s: duration };
  replace(
    byId('stats-table'),
    el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, el('span', { class: 'sr-only' }, t('col.call_type'))), cols.map((c) => el('th', { scope: 'col', class: 'num' }, t(`stats.${c}`))))),
    el(
      'tbody',
      {},
      ['audio', 'video', 'all'].map((type) =>
        el(
          'tr',
          { class: type === 'all' ? 'total-row' : '' },
          el('th', { scope: 'row' }, t(type === 'all' ? 'stats.all' : `type.${type}`)),
          cols.map((c) => el('td', { class: 'num mono', dataset: { type, field: c }, title: c.endsWith('_s') ? `${totals[type]?.[c] ?? 0} s` : undefined }, fmt[c](totals[type]?.[c]))),
        ),
      ),
    ),
  );
}

function renderPage(body) {
  const items = Array.isArray(body.items) ? body.items : [];
  if (body.next_cursor && cursors.length === page + 1) cursors.push(body.next_cursor);
  else if (body.next_cursor) cursors[page + 1] = body.next_cursor;
  else cursors.length = page + 1;
  const rows = items.map((cdr) =>
    el(
      'tr',
      { dataset: { id: cdr.id, node: cdr.node } },
      el('td', { class: 'node-col mono' }, cdr.node),
      el('td', { class: 'mono' }, dateTime(cdr.start_time)),
      el('td', { class: 'mono muted' }, dateTime(cdr.end_time)),
      el('td', {}, typeBadge(cdr.call_type)),
      el('td', { class: 'mono strong', title: cdr.caller_uri }, cdr.caller),
      el('td', { class: 'mono strong', title: cdr.called_uri }, cdr.called),
      el('td', {}, el('span', { class: `badge status-${cdr.status}` }, t(`status.${cdr.status}`))),
      el('td', {}, t(`disposition.${cdr.disposition}`), cdr.sip_code ? el('span', { class: 'code' }, ` ${cdr.sip_code}`) : null),
      el('td', { class: 'num mono', title: `${cdr.talk_s} s` }, cdr.status === 'connected' ? duration(cdr.talk_s) : '—'),
      el('td', { class: 'actions' }, el('a', { class: 'button small secondary', href: `#/log/${encodeURIComponent(cdr.id)}${cluster.recordSuffix(cdr.node)}`, 'aria-label': `${t('action.view_log')} ${cdr.caller} → ${cdr.called}` }, t('action.view_log'))),
    ),
  );
  replace(byId('record-rows'), rows);
  byId('records-empty').hidden = items.length > 0;
  const total = lastStats?.totals?.all?.calls ?? 0;
  const from = page * PAGE_SIZE + (items.length ? 1 : 0);
  const to = page * PAGE_SIZE + items.length;
  const controls = () => [
    el('span', { class: 'muted' }, t('page.range', { from: count(from), to: count(to), total: count(total) })),
    el('button', { type: 'button', class: 'secondary small', disabled: page === 0, onclick: () => goTo(page - 1) }, t('page.prev')),
    el('button', { type: 'button', class: 'secondary small', disabled: !body.next_cursor, onclick: () => goTo(page + 1) }, t('page.next')),
  ];
  replace(byId('q-pager'), controls());
  replace(byId('q-pager-bottom'), items.length > 20 ? controls() : []);
}
