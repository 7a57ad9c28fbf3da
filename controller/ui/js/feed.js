// The events feed: every CloudEvent the console's streams brought, newest first, with a
// filter by kind; each one opens to its whole envelope.

import { h, replace } from './dom.js';
import { clock } from './format.js';
import { listen, recent, kind, streamStates } from './live.js';

const SHOWN = 200;

function summary(e) {
  const d = e.data && typeof e.data === 'object' ? e.data : {};
  const parts = [];
  if (d.source && d.target) parts.push(`${d.source} → ${d.target}`);
  for (const k of ['protocol', 'shard_id', 'network_id', 'network', 'migration_id', 'address', 'workload', 'host', 'state', 'reason', 'message']) {
    if (d[k] !== undefined && d[k] !== null && typeof d[k] !== 'object') parts.push(`${k.replace(/_/g, ' ')} ${d[k]}`);
  }
  if (e.subject) parts.unshift(String(e.subject));
  return parts.join(' · ');
}

function item(e) {
  const k = kind(e.type);
  return h('li', { tabindex: 0, 'data-event-type': e.type, 'data-kind': k }, [
    h('span', { class: 'when', text: e.time ? clock(e.time) : '' }),
    h('span', { class: 'type', text: e.type }),
    ' ', h('span', { text: summary(e) }),
    h('details', {}, [h('summary', { text: 'Envelope' }), h('pre', { text: JSON.stringify(e, null, 2) })]),
  ]);
}

export function mount(main) {
  const filter = h('select', { id: 'event-filter' }, [
    ['all', 'Every event'], ['topology', 'Topology'], ['shard', 'Shards and migrations'], ['network', 'Networks'], ['other', 'Other'],
  ].map(([v, t]) => h('option', { value: v, text: t })));
  const streams = h('span', { class: 'muted' });
  const list = h('ol', { class: 'feed', 'aria-label': 'Events, newest first', 'aria-live': 'polite', 'aria-relevant': 'additions' });
  const count = h('p', { class: 'muted', id: 'event-count' });
  replace(main, h('h1', { text: 'Events' }),
    h('div', { class: 'toolbar' }, [h('label', { for: 'event-filter', text: 'Show' }), filter, streams]), count, list);
  const wanted = (e) => filter.value === 'all' || kind(e.type) === filter.value;
  const render = () => {
    const shown = recent().filter(wanted).slice(-SHOWN).reverse();
    replace(list, ...shown.map(item));
    count.textContent = shown.length ? `${shown.length} events` : 'No events yet: they appear here as they happen.';
    streams.textContent = [...streamStates()].filter(([, st]) => st !== 'absent').map(([p, st]) => `${p} ${st}`).join(' · ');
  };
  filter.addEventListener('change', render);
  const unlisten = listen((e) => {
    if (!wanted(e)) return;
    list.prepend(item(e));
    while (list.children.length > SHOWN) list.lastChild.remove();
    count.textContent = `${list.children.length} events`;
  });
  const timer = setInterval(() => {
    streams.textContent = [...streamStates()].filter(([, st]) => st !== 'absent').map(([p, st]) => `${p} ${st}`).join(' · ');
  }, 2000);
  render();
  return () => { unlisten(); clearInterval(timer); };
}
