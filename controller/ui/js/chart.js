// Line charts of time series in SVG: one y axis with round ticks, time on x, a point per
// bucket, and a text summary for screen readers.

import { h, s } from './dom.js';
import { clock } from './format.js';

const W = 480, H = 200, L = 54, R = 12, T = 12, B = 28;

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

/**
 * `name` (data-chart), `title`, `times` (Unix ms), `series`: [{name, color, values}],
 * `format(v)` for ticks and the summary.
 */
export function lineChart({ name, title, times, series, format }) {
  const all = series.flatMap((x) => x.values);
  const max = niceMax(Math.max(0, ...all));
  const t0 = times[0] ?? 0, t1 = times[times.length - 1] ?? 1;
  const x = (t) => (t1 === t0 ? L + (W - L - R) / 2 : L + ((t - t0) / (t1 - t0)) * (W - L - R));
  const y = (v) => T + (1 - v / max) * (H - T - B);
  const grid = [0, 0.25, 0.5, 0.75, 1].map((f) => s('g', { class: 'grid' }, [
    s('line', { x1: L, x2: W - R, y1: y(max * f), y2: y(max * f) }),
    s('text', { x: L - 6, y: y(max * f) + 3, 'text-anchor': 'end', text: format(max * f) }),
  ]));
  const ticks = times.length ? [...new Set([0, Math.floor((times.length - 1) / 2), times.length - 1])] : [];
  const xlabels = ticks.map((i) => s('text', { x: x(times[i]), y: H - 8, 'text-anchor': i === 0 && times.length > 1 ? 'start' : i === times.length - 1 && times.length > 1 ? 'end' : 'middle', text: clock(times[i]) }));
  const lines = series.map((sr) => {
    const d = sr.values.map((v, i) => `${i ? 'L' : 'M'}${x(times[i]).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    const dots = sr.values.map((v, i) => (v > 0 ? s('circle', { cx: x(times[i]).toFixed(1), cy: y(v).toFixed(1), r: 2.5, fill: sr.color }) : null));
    return s('g', { 'data-series': sr.name }, [s('path', { d, stroke: sr.color }), ...dots]);
  });
  const nonzero = all.filter((v) => v > 0).length;
  const summary = series.map((sr) => {
    const last = sr.values[sr.values.length - 1] ?? 0;
    return `${sr.name}: latest ${format(last)}, highest ${format(Math.max(0, ...sr.values))}`;
  }).join('; ');
  const svg = s('svg', {
    class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img',
    'aria-label': `${title}, ${times.length} buckets. ${summary}`,
  }, [s('g', { class: 'axis' }, [s('line', { x1: L, x2: L, y1: T, y2: H - B }), s('line', { x1: L, x2: W - R, y1: H - B, y2: H - B })]), ...grid, ...xlabels, ...lines]);
  const key = h('div', { class: 'chart-legend' }, series.map((sr) => {
    const sw = h('span', { class: 'swatch', 'aria-hidden': 'true' });
    sw.style.background = sr.color;
    return h('span', {}, [sw, sr.name]);
  }));
  return h('figure', { class: 'chart panel', 'data-chart': name, 'data-points': times.length, 'data-nonzero': nonzero }, [
    h('figcaption', { text: title }), svg, key,
  ]);
}
