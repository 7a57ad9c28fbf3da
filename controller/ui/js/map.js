// The live topology map: services as nodes coloured by type, dependencies as edges
// coloured by error rate and as wide as their traffic, laid out in columns by dependency
// depth. New-dependency events refetch it at once; statistics refresh every 10 s.

import { get } from './api.js';
import { activate, h, replace, s } from './dom.js';
import { count, bytes, ms, percent, label, clock } from './format.js';
import { layered } from './layout.js';
import { typeColor, errorColor, edgeWidth, TYPE_COLORS, ERROR_STOPS } from './colors.js';
import { listen, kind } from './live.js';

const REFRESH_MS = 10000;
const NODE_W = 156, NODE_H = 46, COL_GAP = 250, ROW_GAP = 78, PAD = 36;

/** Dependencies merged per (source, target), as the map draws them. */
export function edgesOf(topology) {
  const merged = new Map();
  for (const d of topology.dependencies || []) {
    const k = d.source + '->' + d.target;
    let e = merged.get(k);
    if (!e) {
      e = { key: k, source: d.source, target: d.target, protocols: new Set(), requests: 0, errors: 0, bytes: 0, flows: 0, p50: 0, p99: 0 };
      merged.set(k, e);
    }
    e.protocols.add(d.protocol);
    e.requests += d.requests || 0;
    e.errors += d.errors || 0;
    e.flows += d.flows || 0;
    e.bytes += (d.bytes_sent || 0) + (d.bytes_received || 0);
    e.p50 = Math.max(e.p50, d.latency_ms?.p50 || 0);
    e.p99 = Math.max(e.p99, d.latency_ms?.p99 || 0);
  }
  for (const e of merged.values()) e.errorRate = e.requests ? e.errors / e.requests : 0;
  return [...merged.values()].sort((a, b) => (a.key < b.key ? -1 : 1));
}

function openService(name) {
  location.hash = '#/service/' + encodeURIComponent(name);
}

function swatch(colour) {
  // Through the CSS object model: the CSP allows no inline style attributes.
  const el = h('span', { class: 'swatch', 'aria-hidden': 'true' });
  el.style.background = colour;
  return el;
}

function legend() {
  const types = Object.entries(TYPE_COLORS).map(([t, c]) => h('span', { 'data-legend-type': t }, [swatch(c), label(t)]));
  const errs = ERROR_STOPS.map((r) => h('span', {}, [swatch(errorColor(r)), (r === 0.1 ? '≥ ' : '') + percent(r)]));
  const widths = [1, 100, 10000].map((n) => h('span', {}, [
    s('svg', { width: 34, height: 14, 'aria-hidden': 'true' }, [s('line', { x1: 2, y1: 7, x2: 32, y2: 7, stroke: '#5b6575', 'stroke-width': edgeWidth(n, 0) })]),
    ' ' + count(n) + ' req',
  ]));
  return h('div', { class: 'legends' }, [
    h('div', { class: 'legend', role: 'group', 'aria-label': 'Service types' }, [h('h3', { text: 'Service type' }), ...types]),
    h('div', { class: 'legend', role: 'group', 'aria-label': 'Edges' }, [
      h('h3', { text: 'Edge colour: error rate' }), ...errs,
      h('h3', { text: 'Edge width: requests' }), ...widths,
    ]),
  ]);
}

function draw(topology, previous) {
  const services = (topology.services || []).map((sv) => ({ name: sv.name, type: sv.type }));
  const edges = edgesOf(topology);
  const { layers, position } = layered(services, edges);
  const tallest = Math.max(1, ...layers.map((l) => l.length));
  const width = PAD * 2 + Math.max(1, layers.length) * COL_GAP - (COL_GAP - NODE_W);
  const height = PAD * 2 + tallest * ROW_GAP - (ROW_GAP - NODE_H) + 30;
  const at = new Map();
  for (const [name, p] of position) {
    const column = layers[p.layer].length;
    const offset = ((tallest - column) * ROW_GAP) / 2;
    at.set(name, { x: PAD + p.layer * COL_GAP, y: PAD + offset + p.index * ROW_GAP });
  }
  const colours = [...new Set(edges.map((e) => errorColor(e.errorRate)))];
  const defs = s('defs', {}, colours.map((c) => s('marker', {
    id: 'arrow-' + c.slice(1), viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7,
    markerUnits: 'userSpaceOnUse', orient: 'auto-start-reverse',
  }, [s('path', { d: 'M0,0 L10,5 L0,10 z', fill: c })])));
  const labels = [];
  const edgeEls = edges.map((e) => {
    const a = at.get(e.source), b = at.get(e.target);
    if (!a || !b) return null;
    let d, lx, ly;
    if (e.source === e.target) {
      d = `M${a.x + NODE_W - 20},${a.y} C${a.x + NODE_W + 40},${a.y - 50} ${a.x + NODE_W + 40},${a.y + NODE_H + 50} ${a.x + NODE_W - 20},${a.y + NODE_H}`;
      lx = a.x + NODE_W + 30; ly = a.y + NODE_H / 2;
    } else if (position.get(e.target).layer > position.get(e.source).layer) {
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x - 4, y2 = b.y + NODE_H / 2;
      const mx = (x1 + x2) / 2;
      d = `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`;
      lx = mx; ly = (y1 + y2) / 2 - 6;
    } else {
      // Back or sideways: below the nodes.
      const x1 = a.x + NODE_W / 2, y1 = a.y + NODE_H, x2 = b.x + NODE_W / 2 + 8, y2 = b.y + NODE_H + 4;
      const dip = Math.max(y1, y2) + 44;
      d = `M${x1},${y1} C${x1},${dip} ${x2},${dip} ${x2},${y2}`;
      lx = (x1 + x2) / 2; ly = dip - 6;
    }
    const colour = errorColor(e.errorRate);
    const protocols = [...e.protocols].sort().join(', ');
    const text = `${e.source} to ${e.target}: ${protocols}, ${count(e.requests)} requests, ${percent(e.errorRate)} errors, p99 ${ms(e.p99)}`;
    const group = s('g', {
      class: 'edge' + (previous && !previous.has(e.key) ? ' fresh' : ''),
      'data-edge': e.key, 'data-source': e.source, 'data-target': e.target,
      'data-requests': e.requests, 'data-errors': e.errors, 'data-error-rate': e.errorRate.toFixed(4),
      'data-protocols': protocols, 'aria-label': text, role: 'img',
    }, [
      s('title', { text }),
      s('path', { class: 'line', d, stroke: colour, 'stroke-width': edgeWidth(e.requests, e.bytes).toFixed(2), 'marker-end': `url(#arrow-${colour.slice(1)})` }),
    ]);
    labels.push(s('text', { x: lx, y: ly, 'text-anchor': 'middle', 'paint-order': 'stroke', stroke: '#ffffff', 'stroke-width': 4, 'stroke-linejoin': 'round', 'data-edge-label': e.key, text: `${protocols} · ${count(e.requests)}` }));
    return group;
  });
  const degree = new Map();
  for (const e of edges) {
    degree.set(e.source, (degree.get(e.source) || 0) + 1);
    degree.set(e.target, (degree.get(e.target) || 0) + 1);
  }
  const nodeEls = services.map((sv) => {
    const p = at.get(sv.name);
    const shown = sv.name.length > 20 ? sv.name.slice(0, 19) + '…' : sv.name;
    const g = s('g', {
      class: 'node', tabindex: 0, role: 'link', 'data-service': sv.name, 'data-type': sv.type,
      transform: `translate(${p.x},${p.y})`,
      'aria-label': `${sv.name}, ${label(sv.type)}, ${degree.get(sv.name) || 0} dependencies. Open its page`,
    }, [
      s('title', { text: `${sv.name} (${label(sv.type)})` }),
      s('rect', { width: NODE_W, height: NODE_H, rx: 8, fill: typeColor(sv.type) }),
      s('text', { x: 10, y: 19, text: shown }),
      s('text', { class: 'type', x: 10, y: 35, text: label(sv.type) }),
    ]);
    activate(g, () => openService(sv.name));
    g.addEventListener('keydown', (ev) => moveFocus(ev, sv.name, layers, position));
    return g;
  });
  const svg = s('svg', {
    class: 'map', viewBox: `0 0 ${width} ${height}`, width, height, role: 'group',
    'aria-label': `Topology map: ${services.length} services, ${edges.length} dependencies. Arrow keys move between services, Enter opens one.`,
    'data-services': services.length, 'data-edges': edges.length,
  }, [defs, s('g', { class: 'edges' }, edgeEls), s('g', { class: 'nodes' }, nodeEls), s('g', { class: 'labels', 'aria-hidden': 'true' }, labels)]);
  return { svg, edges };
}

function moveFocus(ev, name, layers, position) {
  const p = position.get(name);
  let target;
  if (ev.key === 'ArrowDown') target = layers[p.layer][p.index + 1];
  else if (ev.key === 'ArrowUp') target = layers[p.layer][p.index - 1];
  else if (ev.key === 'ArrowRight' || ev.key === 'ArrowLeft') {
    const column = layers[p.layer + (ev.key === 'ArrowRight' ? 1 : -1)];
    if (column && column.length) target = column[Math.min(p.index, column.length - 1)];
  } else return;
  ev.preventDefault();
  if (target) document.querySelector(`svg.map .node[data-service="${CSS.escape(target)}"]`)?.focus();
}

function table(edges) {
  const rows = edges.map((e) => activate(h('tr', { tabindex: 0, 'data-edge-row': e.key, 'aria-label': `${e.source} to ${e.target}; Enter opens ${e.source}` }, [
    h('td', { text: e.source }), h('td', { text: e.target }), h('td', { text: [...e.protocols].sort().join(', ') }),
    h('td', { class: 'num', text: count(e.requests) }), h('td', { class: 'num', text: percent(e.errorRate) }),
    h('td', { class: 'num', text: ms(e.p50) }), h('td', { class: 'num', text: ms(e.p99) }), h('td', { class: 'num', text: bytes(e.bytes) }),
  ]), () => openService(e.source)));
  return h('div', { class: 'table-wrap' }, [h('table', {}, [
    h('caption', { text: 'Dependencies' }),
    h('thead', {}, [h('tr', {}, ['Source', 'Target', 'Protocol', 'Requests', 'Errors', 'p50', 'p99', 'Bytes'].map((t, i) => h('th', { scope: 'col', class: i >= 3 ? 'num' : null, text: t })))]),
    h('tbody', {}, rows),
  ])]);
}

export function mount(main) {
  const summary = h('p', { class: 'muted', id: 'map-summary', text: 'Loading the topology…' });
  const wrap = h('div', { class: 'map-wrap panel' });
  const below = h('div');
  replace(main, h('h1', { text: 'Topology map' }), summary, legend(), wrap, below);
  let known = null;
  let timer = null;
  let pending = null;
  let stopped = false;
  const refresh = async () => {
    clearTimeout(timer);
    if (document.hidden && known) {
      // A tab nobody looks at asks for nothing; it refreshes when shown again.
      timer = setTimeout(refresh, REFRESH_MS);
      return;
    }
    try {
      const topology = await get('/topology?shape=weft');
      if (stopped) return;
      const focused = document.activeElement?.getAttribute?.('data-service');
      const { svg, edges } = draw(topology, known);
      known = new Set(edges.map((e) => e.key));
      replace(wrap, svg);
      replace(below, table(edges));
      summary.textContent = `${topology.services.length} services, ${edges.length} dependencies, ` +
        `${count(topology.totals?.requests || 0)} requests; updated ${clock(topology.generated_at)}`;
      if (focused) wrap.querySelector(`.node[data-service="${CSS.escape(focused)}"]`)?.focus();
    } catch (e) {
      if (!stopped) summary.textContent = 'Could not load the topology: ' + e.message;
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  };
  const unlisten = listen((e) => {
    if (kind(e.type) !== 'topology') return;
    clearTimeout(pending);
    pending = setTimeout(refresh, 250);
  });
  const shown = () => { if (!document.hidden) refresh(); };
  document.addEventListener('visibilitychange', shown);
  refresh();
  return () => {
    document.removeEventListener('visibilitychange', shown);
    stopped = true;
    clearTimeout(timer);
    clearTimeout(pending);
    unlisten();
  };
}
