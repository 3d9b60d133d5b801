// The node selector of the two-centre view: this node, the whole cluster, or one peer, for
// every page (live calls, query with its chart and statistics, monitoring). The choice is
// remembered; each page adds `scopeQuery()` to its requests and reports the answer's
// `nodes` and `unavailable` here, which the strip under the header shows. On a node with
// no peers in `[cluster]` the selector stays hidden and nothing changes.

import { getJSON } from './api.js';
import { byId, el, replace } from './dom.js';
import { t } from './i18n.js';

const STORAGE_KEY = 'sipedge.node';
/** `local`, `cluster`, or a peer's name. */
let choice = 'local';
let self = '';
let peers = [];
const listeners = new Set();
/** The latest reach reported by each view: { nodes, unavailable }. */
const reach = new Map();
let currentView = null;

/** Reads the cluster's nodes; resolves once the selector is ready (also when it fails). */
export async function init() {
  const select = byId('node-select');
  select.addEventListener('change', () => choose(select.value));
  try {
    const body = await getJSON('/api/cluster');
    self = String(body.node || '');
    peers = Array.isArray(body.peers) ? body.peers.map(String) : [];
  } catch {
    peers = [];
  }
  let stored = null;
  try {
    stored = localStorage.getItem(STORAGE_KEY);
  } catch {
    // Storage can be disabled; the choice then lasts for this page only.
  }
  const fromUrl = new URLSearchParams(location.search).get('node');
  const wanted = fromUrl || stored || 'local';
  choice = wanted === 'cluster' || peers.includes(wanted) ? wanted : 'local';
  byId('node-picker').hidden = peers.length === 0;
  relabel();
  applyClass();
}

function choose(value) {
  choice = value === 'cluster' || peers.includes(value) ? value : 'local';
  try {
    localStorage.setItem(STORAGE_KEY, choice);
  } catch {
    // As in init.
  }
  reach.clear();
  applyClass();
  render();
  for (const fn of listeners) fn(choice);
}

function applyClass() {
  document.body.classList.toggle('cluster-view', choice !== 'local');
}

/** Calls `fn` when the operator picks another node or scope. */
export function onChange(fn) {
  listeners.add(fn);
}

/** Whether the pages show this node alone (and its live events apply). */
export function isLocal() {
  return choice === 'local';
}

/** Whether this node's own data is part of what is shown. */
export function includesSelf() {
  return choice === 'local' || choice === 'cluster';
}

/** The query parameters of the choice, to merge into a request's. */
export function scopeParams() {
  if (choice === 'cluster') return { scope: 'cluster' };
  if (choice === 'local') return {};
  return { node: choice };
}

/** `&scope=…` / `&node=…` to append to a path that has a query string, or ''. */
export function scopeQuery() {
  const params = scopeParams();
  return Object.entries(params)
    .map(([k, v]) => `&${k}=${encodeURIComponent(v)}`)
    .join('');
}

/** The `?node=` suffix for one record's log: empty when this node holds it. */
export function recordSuffix(node) {
  return node && self && node !== self ? `?node=${encodeURIComponent(node)}` : '';
}

/** The view on screen, whose reach the strip shows. */
export function setView(view) {
  currentView = view;
  render();
}

/** Notes which nodes answered `body` for `view`. */
export function report(view, body) {
  if (isLocal() || !body) {
    reach.delete(view);
  } else {
    reach.set(view, {
      nodes: Array.isArray(body.nodes) ? body.nodes : [],
      unavailable: Array.isArray(body.unavailable) ? body.unavailable : [],
    });
  }
  if (view === currentView) render();
}

export function relabel() {
  const select = byId('node-select');
  const options = [
    el('option', { value: 'local' }, t('cluster.local', { node: self })),
    el('option', { value: 'cluster' }, t('cluster.all')),
    ...peers.map((p) => el('option', { value: p }, p)),
  ];
  replace(select, options);
  select.value = choice;
  render();
}

function render() {
  const strip = byId('cluster-status');
  const seen = reach.get(currentView);
  if (isLocal() || !seen) {
    strip.hidden = true;
    replace(strip);
    return;
  }
  strip.hidden = false;
  strip.classList.toggle('has-unavailable', seen.unavailable.length > 0);
  replace(
    strip,
    el('span', { class: 'reach-answered' }, `${t('cluster.answered')}: `, seen.nodes.map((n) => el('span', { class: 'node-chip ok', dataset: { node: n } }, n))),
    seen.unavailable.length
      ? el('span', { class: 'reach-unavailable', role: 'status' }, `${t('cluster.unavailable')}: `, seen.unavailable.map((n) => el('span', { class: 'node-chip bad', dataset: { node: n } }, n)))
      : null,
    seen.unavailable.length ? el('span', { class: 'muted' }, t('cluster.partial')) : null,
  );
}
