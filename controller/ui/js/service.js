// A service's page: what it served and asked for over time (requests, p50/p99 latency,
// errors per bucket), and its dependencies both ways with their statistics.

import { get } from './api.js';
import { activate, h, replace } from './dom.js';
import { count, bytes, ms, percent, label, clock } from './format.js';
import { lineChart } from './chart.js';
import { typeColor } from './colors.js';

const REFRESH_MS = 10000;

function depTable(caption, deps, peerOf, emptyText) {
  if (!deps.length) return h('p', { class: 'muted', text: emptyText });
  const rows = deps.map((d) => {
    const peer = peerOf(d);
    const rate = d.requests ? d.errors / d.requests : 0;
    return activate(h('tr', { tabindex: 0, 'data-dependency': `${d.source}->${d.target}:${d.port}`, 'aria-label': `${peer}; Enter opens its page` }, [
      h('td', { text: peer }), h('td', { text: d.protocol }), h('td', { class: 'num', text: d.port }),
      h('td', { class: 'num', text: count(d.requests) }), h('td', { class: 'num', text: count(d.errors) }),
      h('td', { class: 'num', text: percent(rate) }), h('td', { class: 'num', text: ms(d.latency_ms?.p50) }),
      h('td', { class: 'num', text: ms(d.latency_ms?.p99) }),
      h('td', { class: 'num', text: bytes((d.bytes_sent || 0) + (d.bytes_received || 0)) }),
      h('td', { text: d.last_seen ? clock(d.last_seen) : '–' }),
    ]), () => { location.hash = '#/service/' + encodeURIComponent(peer); });
  });
  return h('div', { class: 'table-wrap' }, [h('table', {}, [
    h('caption', { text: caption }),
    h('thead', {}, [h('tr', {}, ['Service', 'Protocol', 'Port', 'Requests', 'Errors', 'Error rate', 'p50', 'p99', 'Bytes', 'Last seen']
      .map((t, i) => h('th', { scope: 'col', class: i >= 2 && i <= 8 ? 'num' : null, text: t })))]),
    h('tbody', {}, rows),
  ])]);
}

/** The buckets from the first with traffic on (at least the newest `min`). */
export function fromFirstTraffic(points, min) {
  const first = points.findIndex((p) => p.inbound.requests + p.outbound.requests + p.inbound.flows + p.outbound.flows > 0);
  const start = first < 0 ? points.length - min : Math.min(first, points.length - min);
  return points.slice(Math.max(0, start));
}

function charts(series) {
  const points = fromFirstTraffic(series.points || [], 12);
  const times = points.map((p) => p.start_unix_ms);
  const served = points.some((p) => p.inbound.requests > 0);
  const made = points.some((p) => p.outbound.requests > 0);
  // Latency and errors of what it served; of what it asked for when it serves nothing.
  const side = served || !made ? 'inbound' : 'outbound';
  const sideName = side === 'inbound' ? 'served' : 'made';
  const perBucket = `per ${series.bucket_width_seconds} s`;
  return h('div', { class: 'charts' }, [
    lineChart({
      name: 'requests', title: `Requests ${perBucket}`, times, format: count,
      series: [
        { name: 'served (inbound)', color: '#1e6fc8', values: points.map((p) => p.inbound.requests) },
        { name: 'made (outbound)', color: '#8e24aa', values: points.map((p) => p.outbound.requests) },
      ],
    }),
    lineChart({
      name: 'latency', title: `Latency of requests ${sideName} (ms)`, times, format: (v) => ms(v).replace(' ms', ''),
      series: [
        { name: 'p50', color: '#00796b', values: points.map((p) => p[side].latency_ms.p50) },
        { name: 'p99', color: '#d84315', values: points.map((p) => p[side].latency_ms.p99) },
      ],
    }),
    lineChart({
      name: 'errors', title: `Errors ${perBucket}`, times, format: count,
      series: [
        { name: 'of requests served', color: '#c62828', values: points.map((p) => p.inbound.errors) },
        { name: 'of requests made', color: '#f29b00', values: points.map((p) => p.outbound.errors) },
      ],
    }),
  ]);
}

export function mount(main, name) {
  const heading = h('h1', {}, ['Service ', h('span', { text: name })]);
  const body = h('div', { 'data-service-page': name }, [h('p', { class: 'muted', text: 'Loading…' })]);
  replace(main, h('p', {}, [h('a', { href: '#/map', text: '← Topology map' })]), heading, body);
  let timer = null;
  let stopped = false;
  const refresh = async () => {
    try {
      const path = '/services/' + encodeURIComponent(name) + '/timeseries';
      const [topology, series] = await Promise.all([get('/topology?shape=weft'), get(path)]);
      if (stopped) return;
      const svc = (topology.services || []).find((x) => x.name === name);
      const inbound = (topology.dependencies || []).filter((d) => d.target === name);
      const outbound = (topology.dependencies || []).filter((d) => d.source === name);
      const chip = h('span', { class: 'state', text: label(svc?.type) });
      chip.style.background = typeColor(svc?.type);
      chip.style.color = '#fff';
      const endpoints = (svc?.endpoints || []).map((e) => `${e.address.includes(':') ? '[' + e.address + ']' : e.address}:${e.port} ${e.protocol}`);
      replace(body,
        h('dl', { class: 'meta' }, [
          h('div', {}, [h('dt', { text: 'Type' }), h('dd', {}, [chip])]),
          h('div', {}, [h('dt', { text: 'Host' }), h('dd', { text: svc?.host || '–' })]),
          h('div', {}, [h('dt', { text: 'Endpoints' }), h('dd', { text: endpoints.join(', ') || '–' })]),
          h('div', {}, [h('dt', { text: 'First seen' }), h('dd', { text: svc?.first_seen ? new Date(svc.first_seen).toLocaleString() : '–' })]),
          h('div', {}, [h('dt', { text: 'Last seen' }), h('dd', { text: svc?.last_seen ? clock(svc.last_seen) : '–' })]),
        ]),
        charts(series),
        h('h2', { text: `Called by (${inbound.length})` }),
        depTable('Services calling ' + name, inbound, (d) => d.source, 'Nothing calls this service.'),
        h('h2', { text: `Calls (${outbound.length})` }),
        depTable('Services ' + name + ' calls', outbound, (d) => d.target, 'This service calls nothing.'),
      );
    } catch (e) {
      if (!stopped) replace(body, h('p', { class: 'error', role: 'alert', text: e.status === 404 ? `No service named ${name} (yet).` : 'Could not load: ' + e.message }));
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  };
  refresh();
  return () => { stopped = true; clearTimeout(timer); };
}
