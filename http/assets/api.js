// The one way the pages talk to the API: same-origin fetches (the browser adds the Basic
// credentials it was given for this origin), JSON decoding, and errors shown to the operator
// in the banner rather than lost in the console.

import { byId, el } from './dom.js';
import { learnServerClock } from './format.js';
import { t } from './i18n.js';

/** A request that failed: `status` is 0 when the server could not be reached at all. */
export class ApiError extends Error {
  constructor(status, message, path) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.path = path;
  }
}

/** GETs `path` and decodes its JSON; throws an ApiError with the server's own message. */
export async function getJSON(path, { signal } = {}) {
  let response;
  try {
    response = await fetch(path, { headers: { Accept: 'application/json' }, credentials: 'same-origin', signal });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, t('error.network'), path);
  }
  learnServerClock(response.headers.get('Date'));
  if (!response.ok) {
    let message = response.statusText || `HTTP ${response.status}`;
    try {
      const body = await response.json();
      if (body && typeof body.error === 'string') message = body.error;
    } catch {
      // Not JSON (a proxy's page, say): the status text is all there is.
    }
    if (response.status === 401) message = t('error.unauthorized');
    throw new ApiError(response.status, message, path);
  }
  try {
    return await response.json();
  } catch {
    throw new ApiError(response.status, t('error.not_json'), path);
  }
}

/** Errors on show, by what failed, so that a repeating failure shows once. */
const shown = new Map();

/** Shows `err` in the banner, under `what` (a translation key naming what was being done). */
export function showError(what, err) {
  if (err && err.name === 'AbortError') return;
  const status = err instanceof ApiError && err.status ? ` (HTTP ${err.status})` : '';
  const text = `${t(what)}: ${err && err.message ? err.message : String(err)}${status}`;
  const old = shown.get(what);
  if (old) old.remove();
  const close = el('button', { type: 'button', class: 'ghost', 'aria-label': t('action.dismiss'), text: '×' });
  const item = el('div', { class: 'error-item' }, el('span', { text }), close);
  close.addEventListener('click', () => clearError(what));
  byId('errors').append(item);
  shown.set(what, item);
}

/** Removes the banner line of `what`, once it works again. */
export function clearError(what) {
  const item = shown.get(what);
  if (item) item.remove();
  shown.delete(what);
}

/** A query string of the non-empty values of `params`. */
export function queryString(params) {
  const q = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && String(value).trim() !== '') q.set(name, String(value).trim());
  }
  const text = q.toString();
  return text ? `?${text}` : '';
}
