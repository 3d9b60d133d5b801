// View log: one call's record and its log. The SIP messages are drawn as a ladder with three
// columns (the terminal, sipedge, the Sipserver), each arrow with its time and first line;
// sipedge's own events for the call sit on sipedge's line in the same timeline. Any message
// opens in full, exactly as it went over the wire.

import { ApiError, clearError, getJSON, showError } from './api.js';
import * as cluster from './cluster.js';
import { byId, el, replace } from './dom.js';
import { clockMs, dateTime, duration, epochMs } from './format.js';
import { t } from './i18n.js';
import { liveCall, typeBadge } from './live.js';

/** How often the log of a call still in progress is read again. */
const LIVE_EVERY_MS = 3000;
/** Bumped on every show and hide, so that a refresh meant for an earlier view stops. */
let generation = 0;
let timer = null;
/** Quiet stretches at least this long get a marker in the ladder. */
const GAP_MS = 10000;
/** The last non-log view, where "back" goes. */
let from = '#/query';
/** What is on screen, to re-render on a language change. */
let current = null;
/** The row that opened the dialog, to give focus back to it. */
let opener = null;

export function init() {
  window.addEventListener('hashchange', (event) => {
    const old = new URL(event.oldURL).hash;
    if (old && !old.startsWith('#/log/')) from = old;
  });
  byId('log-back').addEventListener('click', () => {
    location.hash = from;
  });
  const dialog = byId('message-dialog');
  byId('message-close').addEventListener('click', () => dialog.close());
  byId('message-ok').addEventListener('click', () => dialog.close());
  dialog.addEventListener('close', () => {
    if (opener) opener.focus();
  });
  dialog.addEventListener('click', (event) => {
    // A click on the backdrop (outside the dialog's box) closes it.
    if (event.target === dialog) dialog.close();
  });
  byId('message-copy').addEventListener('click', copy);
}

export function relabel() {
  if (current) render(current.id, current.cdr, current.entries);
}

/** `params` may name the node that holds the call (`node=…`, from the cluster view). */
export function show(id, params) {
  replace(byId('log-summary'), el('p', { class: 'muted' }, t('loading')));
  replace(byId('ladder'));
  current = null;
  clearTimeout(timer);
  generation += 1;
  load(id, generation, cluster.recordSuffix(params?.get('node') || ''));
}

export function hide() {
  clearTimeout(timer);
  generation += 1;
}

/** Reads the call's record and log; while there is no record yet (the call is still in
 * progress) it reads them again every few seconds, so the ladder grows as the call goes on. */
async function load(id, mine, node = '') {
  const path = encodeURIComponent(id);
  const [cdr, log] = await Promise.all([
    getJSON(`/api/cdrs/${path}${node}`).catch((err) => (err instanceof ApiError && err.status === 404 ? null : Promise.reject(err))).catch((err) => {
      showError('error.log', err);
      return null;
    }),
    getJSON(`/api/cdrs/${path}/log${node}`).catch((err) => {
      if (!(err instanceof ApiError && err.status === 404 && liveCall(id))) showError('error.log', err);
      return null;
    }),
  ]);
  if (mine !== generation) return;
  if (log) clearError('error.log');
  current = { id, cdr, entries: log && Array.isArray(log.entries) ? log.entries : [] };
  render(id, cdr, current.entries);
  if (!cdr && liveCall(id)) timer = setTimeout(() => load(id, mine, node), LIVE_EVERY_MS);
}

function render(id, cdr, entries) {
  renderSummary(id, cdr);
  renderLadder(cdr, entries);
}

function renderSummary(id, cdr) {
  if (!cdr) {
    const call = liveCall(id);
    if (!call) {
      replace(byId('log-summary'), el('p', { class: 'muted' }, t('log.no_cdr')), el('p', { class: 'mono small' }, id));
      return;
    }
    replace(
      byId('log-summary'),
      el(
        'div',
        { class: 'call-head' },
        el('span', { class: 'party mono' }, call.caller),
        el('span', { class: 'arrow-glyph', 'aria-hidden': 'true' }, '→'),
        el('span', { class: 'party mono' }, call.called),
        typeBadge(call.call_type),
        el('span', { class: `badge state-${call.state}` }, t(`state.${call.state}`)),
        el('span', { class: 'muted' }, t('log.in_progress')),
      ),
    );
    return;
  }
  const item = (key, value, cls) => el('div', {}, el('dt', {}, t(key)), el('dd', { class: cls || '' }, value ?? '—'));
  replace(
    byId('log-summary'),
    el(
      'div',
      { class: 'call-head' },
      el('span', { class: 'party mono' }, cdr.caller),
      el('span', { class: 'arrow-glyph', 'aria-hidden': 'true' }, '→'),
      el('span', { class: 'party mono' }, cdr.called),
      typeBadge(cdr.call_type),
      el('span', { class: `badge status-${cdr.status}` }, t(`status.${cdr.status}`)),
      el('span', { class: 'muted' }, t(`disposition.${cdr.disposition}`), cdr.sip_code ? ` · ${cdr.sip_code}` : ''),
    ),
    el(
      'dl',
      { class: 'facts' },
      item('col.start_time', dateTime(cdr.start_time), 'mono'),
      item('col.ring_time', cdr.ring_time ? dateTime(cdr.ring_time) : '—', 'mono'),
      item('col.answer_time', cdr.answer_time ? dateTime(cdr.answer_time) : '—', 'mono'),
      item('col.end_time', dateTime(cdr.end_time), 'mono'),
      item('col.duration', duration(cdr.duration_s), 'mono'),
      item('col.talk', duration(cdr.talk_s), 'mono'),
      item('col.ended_by', t(`ended_by.${cdr.ended_by}`)),
      item('col.transport', String(cdr.transport || '').toUpperCase()),
      item('col.terminal', cdr.terminal, 'mono'),
      item('col.source', t(`source.${cdr.source || 'proxy'}`)),
      item('col.call_id', cdr.call_id, 'mono wrap'),
    ),
  );
}

function firstLine(text) {
  return String(text || '').split(/\r?\n/, 1)[0];
}

function ipOf(addr) {
  const text = String(addr || '');
  const colon = text.lastIndexOf(':');
  return (colon > 0 ? text.slice(0, colon) : text).replace(/^\[|\]$/g, '');
}

/** The lane of every address in a call's log: 0 the terminal, 1 sipedge, 2 the Sipserver.
 * The terminal is the CDR's `terminal` (for a call still in progress, whoever sent the first
 * message sipedge received); sipedge is whatever sent the replies sipedge made itself (the
 * `sent` entries); every other address is on the Sipserver's side. A relayed message is
 * logged once with its sender and the address it was relayed to, so its arrow crosses
 * sipedge's line from one end to the other. */
function lanes(cdr, sips) {
  const terminal = cdr?.terminal || sips.find((e) => e.direction === 'received')?.src || '';
  const own = new Set(sips.filter((e) => e.direction === 'sent').map((e) => e.src));
  const all = sips.flatMap((e) => [e.src, e.dst]);
  const exact = all.includes(terminal);
  const isTerminal = (addr) => (exact ? addr === terminal : ipOf(addr) === ipOf(terminal));
  const laneOf = (addr) => (isTerminal(addr) ? 0 : own.has(addr) ? 1 : 2);
  const upstream = all.find((a) => laneOf(a) === 2) || '';
  return { terminal, upstream, laneOf };
}

/** A message's label: a request's method and URI, or a response's status and its method. */
function label(text) {
  const line = firstLine(text);
  const response = /^SIP\/2\.0\s+(\d{3})\s*(.*)$/.exec(line);
  if (response) {
    const cseq = /^(?:CSeq|CSEQ|cseq):\s*\d+\s+([A-Za-z]+)/m.exec(String(text));
    return { kind: `s${response[1][0]}xx`, main: `${response[1]} ${response[2]}`, extra: cseq ? `(${cseq[1]})` : '' };
  }
  const [method, uri = ''] = line.split(' ');
  return { kind: 'request', main: method, extra: uri };
}

function renderLadder(cdr, entries) {
  const ladder = byId('ladder');
  const sips = entries.filter((e) => e.type === 'sip');
  if (entries.length === 0) {
    replace(ladder, el('div', { class: 'empty' }, t('log.empty')));
    return;
  }
  const { terminal, upstream, laneOf } = lanes(cdr, sips);
  const t0 = epochMs(entries[0].at);
  const head = el(
    'div',
    { class: 'ladder-head', 'aria-hidden': 'true' },
    el('div', { class: 'ladder-time' }),
    el(
      'div',
      { class: 'lanes' },
      el('div', { class: 'lane-title l0' }, el('strong', {}, t('log.terminal')), el('span', { class: 'mono' }, terminal)),
      el('div', { class: 'lane-title l1' }, el('strong', {}, 'sipedge')),
      el('div', { class: 'lane-title l2' }, el('strong', {}, 'Sipserver'), el('span', { class: 'mono' }, upstream)),
    ),
  );
  let previous = t0;
  const rows = entries.flatMap((entry, index) => {
    const at = epochMs(entry.at);
    // A long quiet stretch (the conversation between ACK and BYE, say) is marked rather than
    // drawn to scale.
    const gap = at - previous >= GAP_MS ? el('li', { class: 'ladder-gap' }, el('span', {}, t('log.gap', { d: duration((at - previous) / 1000) }))) : null;
    previous = Number.isNaN(at) ? previous : at;
    return [gap, row(entry, index, at)].filter(Boolean);
  });
  function row(entry, index, at) {
    const time = el(
      'div',
      { class: 'ladder-time' },
      el('span', { class: 'mono' }, clockMs(entry.at)),
      el('span', { class: 'mono muted delta' }, Number.isNaN(at - t0) ? '' : `+${((at - t0) / 1000).toFixed(3)}s`),
    );
    if (entry.type !== 'sip') {
      return el('li', {}, el('div', { class: 'ladder-row event' }, time, el('div', { class: 'lanes' }, el('div', { class: 'event-note' }, el('span', { class: 'event-tag' }, t('log.event')), entry.text))));
    }
    const from = laneOf(entry.src);
    const to = laneOf(entry.dst);
    // Left half: terminal ↔ sipedge; right half: sipedge ↔ Sipserver; both: relayed through.
    const span = Math.min(from, to) === 0 ? (Math.max(from, to) === 2 ? 'seg-full' : 'seg-left') : 'seg-right';
    const rightward = to > from;
    const l = label(entry.text);
    const names = [t('log.terminal'), 'sipedge', 'Sipserver'];
    const button = el(
      'button',
      {
        type: 'button',
        class: `ladder-row sip ${l.kind}`,
        dataset: { index: String(index) },
        'aria-label': `${clockMs(entry.at)} ${names[from]} → ${names[to]}: ${firstLine(entry.text)}`,
        onclick: (event) => open(entry, event.currentTarget),
      },
      time,
      el(
        'div',
        { class: 'lanes' },
        el(
          'div',
          { class: `arrow ${span} ${rightward ? 'dir-r' : 'dir-l'}` },
          el('span', { class: 'arrow-label' }, el('span', { class: 'label-box' }, el('strong', {}, l.main), ' ', el('span', { class: 'muted' }, l.extra))),
        ),
      ),
    );
    return el('li', {}, button);
  }
  replace(
    ladder,
    head,
    el(
      'div',
      { class: 'ladder-body' },
      el('div', { class: 'lane-lines', 'aria-hidden': 'true' }, el('i', { class: 'l0' }), el('i', { class: 'l1' }), el('i', { class: 'l2' })),
      el('ol', { 'aria-label': t('log.ladder') }, rows),
    ),
  );
}

function open(entry, row) {
  opener = row;
  byId('message-title').textContent = firstLine(entry.text);
  const size = new TextEncoder().encode(entry.text || '').length;
  replace(
    byId('message-meta'),
    el('span', { class: 'mono' }, dateTime(entry.at), '.', clockMs(entry.at).slice(-3)),
    ' · ',
    t(entry.direction === 'received' ? 'log.received' : 'log.sent'),
    ' · ',
    String(entry.transport || '').toUpperCase(),
    ' · ',
    el('span', { class: 'mono' }, `${entry.src} → ${entry.dst}`),
    ' · ',
    t('log.bytes', { n: size }),
    entry.text_base64 ? el('span', { class: 'warn-text' }, ` · ${t('log.not_utf8')}`) : null,
  );
  byId('message-text').textContent = entry.text || '';
  byId('message-dialog').showModal();
  byId('message-text').focus();
}

async function copy() {
  const pre = byId('message-text');
  try {
    await navigator.clipboard.writeText(pre.textContent);
  } catch {
    // Without a secure context there is no clipboard API: select the text for Ctrl+C.
    const range = document.createRange();
    range.selectNodeContents(pre);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }
}
