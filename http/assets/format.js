// How times, durations and numbers are shown. The API gives every time in RFC 3339 with the
// node's offset; the pages show the node's wall-clock time, whatever the browser's zone, so
// that an operator in another city reads the same times as the CSV export.

import { lang } from './i18n.js';

/** Milliseconds to add to the browser's clock to get the server's (from a `Date` header). */
let serverSkewMs = 0;
/** The node's UTC offset in minutes, learnt from the first RFC 3339 time the API gave. */
let nodeOffsetMin = null;

const RFC3339 = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

/** Remembers the server's clock from a response's `Date` header (whole seconds only, so
 * differences under two seconds are noise and ignored). */
export function learnServerClock(dateHeader) {
  const server = Date.parse(dateHeader || '');
  if (Number.isNaN(server)) return;
  const skew = server - Date.now();
  serverSkewMs = Math.abs(skew) > 2000 ? skew : 0;
}

/** The server's "now" in epoch milliseconds. */
export function serverNow() {
  return Date.now() + serverSkewMs;
}

function learnOffset(zone) {
  if (nodeOffsetMin !== null || !zone) return;
  if (zone === 'Z') nodeOffsetMin = 0;
  else {
    const sign = zone[0] === '-' ? -1 : 1;
    nodeOffsetMin = sign * (Number(zone.slice(1, 3)) * 60 + Number(zone.slice(4, 6)));
  }
}

/** Epoch milliseconds of an API time: an RFC 3339 string, or a number of milliseconds. */
export function epochMs(value) {
  if (typeof value === 'number') return value;
  if (typeof value !== 'string') return NaN;
  return Date.parse(value);
}

/** The node's wall-clock parts of an API time: { date: 'YYYY-MM-DD', time: 'hh:mm:ss', ms }. */
export function wall(value) {
  if (typeof value === 'string') {
    const m = RFC3339.exec(value);
    if (m) {
      learnOffset(m[4]);
      return { date: m[1], time: m[2], ms: (m[3] || '.000').slice(1, 4).padEnd(3, '0') };
    }
  }
  const t = epochMs(value);
  if (Number.isNaN(t)) return null;
  const shifted = new Date(t + (nodeOffsetMin ?? -new Date(t).getTimezoneOffset()) * 60000);
  const iso = shifted.toISOString();
  return { date: iso.slice(0, 10), time: iso.slice(11, 19), ms: iso.slice(20, 23) };
}

/** `YYYY-MM-DD hh:mm:ss` in the node's zone; '—' for none. */
export function dateTime(value) {
  const w = wall(value);
  return w ? `${w.date} ${w.time}` : '—';
}

/** `hh:mm:ss` in the node's zone. */
export function clock(value) {
  const w = wall(value);
  return w ? w.time : '—';
}

/** `hh:mm:ss.mmm`, for SIP ladders where milliseconds matter. */
export function clockMs(value) {
  const w = wall(value);
  return w ? `${w.time}.${w.ms}` : '—';
}

/** A duration in seconds as `h:mm:ss` (or `m:ss` under an hour); hours grow past 24. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return '—';
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
}

function locale() {
  return lang() === 'zh' ? 'zh-CN' : 'en';
}

/** A count with thousands separators. */
export function count(n) {
  return new Intl.NumberFormat(locale()).format(n ?? 0);
}

/** A ratio 0..1 as a percentage with one decimal. */
export function percent(ratio) {
  return new Intl.NumberFormat(locale(), { style: 'percent', minimumFractionDigits: 1, maximumFractionDigits: 1 })
    .format(ratio ?? 0);
}

/** A byte count in the unit that keeps it short. */
export function bytes(n) {
  if (typeof n !== 'number') return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let i = 0;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i += 1;
  }
  return `${new Intl.NumberFormat(locale(), { maximumFractionDigits: i ? 1 : 0 }).format(value)} ${units[i]}`;
}

/** A time as typed into the query form, as the API's `YYYY-MM-DD hh:mm:ss`: also takes the
 * document's `YYYYMMDDhhmmss`, `/` between date parts, and a missing `:ss`. Null when it is
 * neither. */
export function normalizeTime(text) {
  const v = String(text || '').trim();
  const compact = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})$/.exec(v);
  if (compact) return `${compact[1]}-${compact[2]}-${compact[3]} ${compact[4]}:${compact[5]}:${compact[6]}`;
  const m = /^(\d{4})[-/](\d{1,2})[-/](\d{1,2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?$/.exec(v);
  if (!m) return null;
  const two = (x) => String(x ?? '0').padStart(2, '0');
  return `${m[1]}-${two(m[2])}-${two(m[3])} ${two(m[4])}:${two(m[5])}:${two(m[6])}`;
}
