// The query's bar chart, drawn in the page from `/api/stats`: one group per bucket (an hour
// when the query covers a day or less, a day otherwise), audio and video talk time side by
// side. Drawn as SVG elements so that it follows the language, scales to any screen, and
// tells the exact value of each bar on hover.

import { el, replace, svg } from './dom.js';
import { count, duration, wall } from './format.js';
import { t } from './i18n.js';

const W = 800;
const H = 300;
const M = { left: 58, right: 12, top: 14, bottom: 34 };
const TYPES = ['audio', 'video'];

/** The unit that keeps axis labels short: [translation key, seconds per unit]. */
function unitFor(maxSeconds) {
  if (maxSeconds <= 120) return ['unit.s', 1];
  if (maxSeconds <= 3 * 3600) return ['unit.min', 60];
  return ['unit.h', 3600];
}

/** A step of 1, 2 or 5 × 10^k giving about `ticks` ticks up to `max`. */
function niceStep(max, ticks) {
  const raw = max / ticks;
  const power = 10 ** Math.floor(Math.log10(raw));
  const f = raw / power;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * power;
}

/** The label of a bucket on the x axis, and its full name for tooltips. */
function bucketNames(bucket, start, next) {
  const a = wall(start);
  if (!a) return ['', ''];
  if (bucket === 'hour') {
    const b = wall(next);
    return [a.time.slice(0, 2), `${a.date} ${a.time.slice(0, 5)}–${b ? b.time.slice(0, 5) : ''}`];
  }
  return [a.date.slice(5), a.date];
}

export function legend(container) {
  replace(
    container,
    TYPES.map((type) => el('span', { class: 'legend-item' }, el('span', { class: `swatch ${type}`, 'aria-hidden': 'true' }), t(`type.${type}`))),
  );
}

/** Draws `stats` (the `/api/stats` answer) into `container`; `onPick(start, end)` is called
 * when a bar group is chosen (click, Enter or Space), to zoom into its interval. */
export function render(container, stats, onPick) {
  const buckets = Array.isArray(stats.buckets) ? stats.buckets : [];
  const n = buckets.length;
  const max = Math.max(0, ...buckets.flatMap((b) => TYPES.map((type) => b[type]?.talk_s ?? 0)));
  const [unitKey, unitS] = unitFor(max);
  const step = max > 0 ? niceStep(max / unitS, 4) : 1;
  const top = max > 0 ? Math.ceil(max / unitS / step) * step : 4;
  const plotW = W - M.left - M.right;
  const plotH = H - M.top - M.bottom;
  const y = (v) => M.top + plotH - (v / top) * plotH;

  const picture = svg('svg', {
    viewBox: `0 0 ${W} ${H}`,
    class: 'bar-chart',
    role: 'img',
    'aria-label': t(stats.bucket === 'hour' ? 'chart.aria_hour' : 'chart.aria_day', { n }),
    dataset: { bucket: stats.bucket || '', groups: String(n) },
  });

  for (let v = 0; v <= top + 1e-9; v += step) {
    const yy = y(v);
    picture.append(
      svg('line', { x1: M.left, x2: W - M.right, y1: yy, y2: yy, class: v === 0 ? 'axis' : 'gridline' }),
      svg('text', { x: M.left - 8, y: yy + 4, class: 'tick', 'text-anchor': 'end' }, count(Math.round(v * 100) / 100)),
    );
  }
  picture.append(
    svg('text', { x: 14, y: M.top + plotH / 2, class: 'axis-title', transform: `rotate(-90 14 ${M.top + plotH / 2})`, 'text-anchor': 'middle' }, `${t('chart.talk')} (${t(unitKey)})`),
  );

  const groupW = n ? plotW / n : plotW;
  const barW = Math.max(1, Math.min(28, groupW * 0.36));
  const every = Math.max(1, Math.ceil(n / 24));
  buckets.forEach((b, i) => {
    const next = buckets[i + 1]?.start ?? stats.end;
    const [label, full] = bucketNames(stats.bucket, b.start, next);
    const cx = M.left + groupW * (i + 0.5);
    const group = svg('g', {
      class: 'bar-group',
      tabindex: '0',
      role: 'button',
      'aria-label': `${full}: ${TYPES.map((type) => `${t(`type.${type}`)} ${duration(b[type]?.talk_s ?? 0)}`).join(', ')}. ${t('chart.zoom')}`,
      dataset: { start: String(b.start) },
    });
    const pick = () => onPick && onPick(b.start, next);
    group.addEventListener('click', pick);
    group.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        pick();
      }
    });
    // The whole column is the target, not only the (maybe tiny) bars.
    group.append(svg('rect', { x: cx - groupW / 2, y: M.top, width: groupW, height: plotH, class: 'hit' }));
    TYPES.forEach((type, k) => {
      const c = b[type] || {};
      const talk = c.talk_s ?? 0;
      const x = k === 0 ? cx - barW - 1 : cx + 1;
      const h = Math.max(0, M.top + plotH - y(talk / unitS));
      group.append(
        svg(
          'rect',
          { x, y: M.top + plotH - h, width: barW, height: h, class: `bar ${type}`, dataset: { type, talk: String(talk) } },
          svg('title', {}, `${full}  ${t(`type.${type}`)}: ${duration(talk)} · ${t('chart.calls', { n: count(c.calls ?? 0) })}`),
        ),
      );
    });
    if (i % every === 0) group.append(svg('text', { x: cx, y: H - M.bottom + 18, class: 'tick', 'text-anchor': 'middle' }, label));
    picture.append(group);
  });
  const table = el(
    'table',
    { class: 'grid' },
    el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, t(stats.bucket === 'hour' ? 'chart.bucket_hour' : 'chart.bucket_day')),
      TYPES.flatMap((type) => [el('th', { scope: 'col', class: 'num' }, `${t(`type.${type}`)} · ${t('stats.calls')}`), el('th', { scope: 'col', class: 'num' }, `${t(`type.${type}`)} · ${t('stats.talk_s')}`)]))),
    el('tbody', {}, buckets.map((b, i) => el('tr', {},
      el('th', { scope: 'row', class: 'mono' }, bucketNames(stats.bucket, b.start, buckets[i + 1]?.start ?? stats.end)[1]),
      TYPES.flatMap((type) => [el('td', { class: 'num mono' }, count(b[type]?.calls ?? 0)), el('td', { class: 'num mono' }, duration(b[type]?.talk_s ?? 0))])))),
  );
  if (max === 0) {
    picture.append(svg('text', { x: M.left + plotW / 2, y: M.top + plotH / 2, class: 'no-data', 'text-anchor': 'middle' }, t('chart.no_talk')));
  }
  replace(container, picture, el('details', { class: 'chart-data' }, el('summary', {}, t('chart.table')), el('div', { class: 'table-scroll' }, table)));
}
