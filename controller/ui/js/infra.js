// Shards, networks and migrations, with their progress: how full each shard is, how
// much of each network the hosts applied, how many workloads each migration moved.

import { get } from './api.js';
import { h, replace } from './dom.js';
import { clock } from './format.js';
import { listen, kind } from './live.js';

const REFRESH_MS = 5000;

function stateChip(text) {
  const t = String(text || '–').toLowerCase();
  const cls = /fail|error|cancel/.test(t) ? 'bad'
    : /running|pending|paused|migrat|progress|out of sync/.test(t) ? 'busy'
      : /done|complete|in sync|in-use|applied|available|allocated|active|succeeded/.test(t) ? 'good' : '';
  return h('span', { class: 'state ' + cls, text: text ?? '–' });
}

function bar(done, total, what) {
  const pct = total ? Math.round((done / total) * 100) : 0;
  return h('span', {}, [
    h('progress', { max: total || 1, value: total ? done : 0, 'aria-label': `${what}: ${done} of ${total}` }),
    ` ${done}/${total} (${pct} %)`,
  ]);
}

function table(caption, heads, rows, empty) {
  if (!rows.length) return h('p', { class: 'muted', text: empty });
  return h('div', { class: 'table-wrap' }, [h('table', {}, [
    h('caption', { text: caption }),
    h('thead', {}, [h('tr', {}, heads.map((t) => h('th', { scope: 'col', text: t })))]),
    h('tbody', {}, rows),
  ])]);
}

function shardRows(shards) {
  return shards.map((sh) => h('tr', { tabindex: 0, 'data-shard': sh.id }, [
    h('td', { text: sh.id }), h('td', { text: sh.cidr }), h('td', { text: sh.network_id || '–' }),
    h('td', {}, [stateChip(sh.status)]),
    h('td', {}, [bar(sh.resource_count || 0, sh.size || 0, `addresses of ${sh.id} in use`)]),
    h('td', { text: sh.last_accessed ? clock(sh.last_accessed) : '–' }),
  ]));
}

function networkRows(networks, statuses) {
  return networks.map((n) => {
    const st = statuses.get(n.network_id);
    const resources = (st?.hosts || []).flatMap((x) => x.resources || []);
    const applied = resources.filter((r) => r.state === 'applied').length;
    const failed = resources.filter((r) => r.state === 'failed').length;
    return h('tr', { tabindex: 0, 'data-network': n.network_id }, [
      h('td', { text: n.network_id }), h('td', { text: n.role + (n.source ? ` of ${n.source}` : '') }),
      h('td', { text: (n.hosts || []).join(', ') || '–' }), h('td', { text: n.nodes }), h('td', { text: n.revision }),
      h('td', {}, [stateChip(st ? (st.in_sync ? 'in sync' : failed ? `${failed} failed` : 'out of sync') : 'unknown')]),
      h('td', {}, [bar(applied, resources.length, `resources of ${n.network_id} applied`)]),
    ]);
  });
}

function migrationRows(migrations) {
  return migrations.map((m) => h('tr', { tabindex: 0, 'data-migration': m.id }, [
    h('td', { text: m.id }), h('td', { text: m.shard_id }), h('td', { text: m.network_id }),
    h('td', {}, [stateChip(m.state)]),
    h('td', {}, [bar(m.moved || 0, m.total || 0, `workloads moved by ${m.id}`)]),
    h('td', { text: m.error || '' }), h('td', { text: m.updated ? clock(m.updated) : '–' }),
  ]));
}

export function mount(main) {
  const note = h('p', { class: 'muted', text: 'Loading…' });
  const shards = h('section', { 'aria-labelledby': 'h-shards' });
  const networks = h('section', { 'aria-labelledby': 'h-networks' });
  const migrations = h('section', { 'aria-labelledby': 'h-migrations' });
  replace(main, h('h1', { text: 'Shards, networks and migrations' }), note,
    h('h2', { id: 'h-shards', text: 'IP shards' }), shards,
    h('h2', { id: 'h-networks', text: 'Networks' }), networks,
    h('h2', { id: 'h-migrations', text: 'Migrations' }), migrations);
  let timer = null, pending = null, stopped = false;
  const refresh = async () => {
    clearTimeout(timer);
    try {
      const [s, n, m] = await Promise.all([get('/shards'), get('/networks'), get('/migrations')]);
      const statuses = new Map(await Promise.all((n.networks || []).map(async (x) => {
        try { return [x.network_id, await get('/networks/' + encodeURIComponent(x.network_id) + '/status')]; } catch { return [x.network_id, null]; }
      })));
      if (stopped) return;
      replace(shards, table('IP shards and the addresses in use', ['Shard', 'CIDR', 'Network', 'Status', 'Addresses in use', 'Last used'], shardRows(s.shards || []), 'No shards.'));
      replace(networks, table('Networks and how much of them the hosts applied', ['Network', 'Role', 'Hosts', 'Nodes', 'Revision', 'State', 'Resources applied'], networkRows(n.networks || [], statuses), 'No networks.'));
      replace(migrations, table('Shard migrations', ['Migration', 'Shard', 'Network', 'State', 'Workloads moved', 'Error', 'Updated'], migrationRows(m.migrations || []), 'No migrations.'));
      note.textContent = `${(s.shards || []).length} shards${s.next_page_token ? ' (first page)' : ''}, ${(n.networks || []).length} networks, ${(m.migrations || []).length} migrations; updated ${clock(Date.now())}`;
    } catch (e) {
      if (!stopped) note.textContent = 'Could not load: ' + e.message;
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  };
  const unlisten = listen((e) => {
    const k = kind(e.type);
    if (k !== 'shard' && k !== 'network') return;
    clearTimeout(pending);
    pending = setTimeout(refresh, 300);
  });
  refresh();
  return () => { stopped = true; clearTimeout(timer); clearTimeout(pending); unlisten(); };
}
