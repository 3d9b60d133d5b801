// The page's entry point: language, header (node, health, live-update status), the hash
// router between the views, and the start of every view.

import { clearError, getJSON, showError } from './api.js';
import * as cluster from './cluster.js';
import { byId } from './dom.js';
import * as events from './events.js';
import { applyStatic, initLang, lang, onLangChange, setLang, t } from './i18n.js';
import * as live from './live.js';
import * as log from './log.js';
import * as monitor from './monitor.js';
import * as query from './query.js';

/** How often the header re-reads `/healthz`. */
const HEALTH_EVERY_MS = 15000;

const views = { live, query, log, monitor };
let current = null;

/** `#/query?start=…` → { page: 'query', rest: '', params }; `#/log/ID` → { page: 'log', rest: 'ID' }. */
function parseHash() {
  const hash = location.hash.replace(/^#\/?/, '');
  const [path, search = ''] = hash.split('?');
  const [page, ...rest] = path.split('/');
  return { page: views[page] ? page : 'live', rest: decodeURIComponent(rest.join('/')), params: new URLSearchParams(search) };
}

/** Whether the page has routed once: later route changes move focus to the new heading, so
 * that keyboard and screen-reader users land on the view they chose. */
let routed = false;

/** The tab's title: the view's heading, with the number of calls in progress in front so
 * that it shows on a background tab. */
function setTitle() {
  const title = current ? byId(`page-${current}`).querySelector('h1') : null;
  const calls = byId('live-count');
  const prefix = calls.hidden ? '' : `(${calls.textContent}) `;
  document.title = `${prefix}${title ? title.textContent : ''} · sipedge`;
}

function route() {
  const { page, rest, params } = parseHash();
  for (const section of document.querySelectorAll('.page')) section.hidden = section.dataset.page !== page;
  for (const link of document.querySelectorAll('.tabs a')) {
    const here = link.dataset.route === page || (page === 'log' && link.dataset.route === 'query');
    if (here) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (current && current !== page && views[current].hide) views[current].hide();
  current = page;
  cluster.setView(page === 'log' ? 'query' : page);
  views[page].show(rest, params);
  setTitle();
  const title = byId(`page-${page}`).querySelector('h1');
  if (routed && title) {
    title.setAttribute('tabindex', '-1');
    title.focus({ preventScroll: true });
  }
  routed = true;
}

async function checkHealth() {
  const pill = byId('health');
  try {
    const response = await fetch('/healthz', { headers: { Accept: 'application/json' } });
    const body = await response.json();
    byId('node-name').textContent = body.node || '';
    const ok = body.status === 'ok';
    pill.className = `pill ${ok ? 'ok' : 'bad'}`;
    pill.textContent = ok ? t('health.ok') : t('health.down');
    pill.title = ok ? '' : (body.reasons || []).join('; ');
    clearError('error.health');
  } catch (err) {
    pill.className = 'pill bad';
    pill.textContent = t('health.unknown');
    showError('error.health', err);
  }
}

function showStream(status) {
  const pill = byId('stream');
  pill.className = `pill ${status === 'open' ? 'ok' : 'warn'}`;
  pill.textContent = t(`stream.${status}`);
}

function showLangButton() {
  const button = byId('lang-switch');
  const other = lang() === 'zh' ? 'en' : 'zh';
  button.textContent = other === 'en' ? 'English' : '中文';
  button.setAttribute('lang', other === 'en' ? 'en' : 'zh-CN');
  button.setAttribute('aria-label', t('lang.switch'));
}

async function start() {
  initLang();
  applyStatic(document);
  showLangButton();
  byId('lang-switch').addEventListener('click', () => setLang(lang() === 'zh' ? 'en' : 'zh'));
  onLangChange(() => {
    applyStatic(document);
    showLangButton();
    showStream(events.connectionStatus());
    checkHealth();
    cluster.relabel();
    if (current && views[current].relabel) views[current].relabel();
    for (const [name, view] of Object.entries(views)) if (name !== current && view.relabel) view.relabel();
    setTitle();
  });
  new MutationObserver(setTitle).observe(byId('live-count'), { childList: true, characterData: true, subtree: true, attributes: true });
  events.on('status', showStream);
  showStream(events.connectionStatus());
  // The views' first requests carry the remembered node selection.
  await cluster.init();
  for (const view of Object.values(views)) view.init();
  events.start();
  window.addEventListener('hashchange', route);
  route();
  checkHealth();
  setInterval(checkHealth, HEALTH_EVERY_MS);
}

start();
