// The console's one set of event streams, shared by every page: the event log (/events,
// from the moment the console opened: the log may hold 100,000 events, too many to replay
// into a page) and the topology and network streams where the controller still serves
// them apart (/events/topology replays its last events by itself; a 404 just leaves a
// stream out). Reconnects resume with Last-Event-ID. Events that reach the console by two
// streams are kept once.

import { follow } from './stream.js';

export const STREAMS = ['/events', '/events/topology', '/events/networks'];
const KEEP = 500;

const events = [];
const seen = new Set();
const listeners = new Set();
const states = new Map();
let started = false;

/** What a CloudEvent is about, from its type: topology, shard, network or other. */
export function kind(type) {
  const t = String(type || '');
  if (t.includes('topology') || t.includes('dependency')) return 'topology';
  if (t.includes('shard') || t.includes('migration') || t.includes('address')) return 'shard';
  if (t.includes('network') || t.includes('mirror') || t.includes('node')) return 'network';
  return 'other';
}

function key(e) {
  return [e.type, e.time, e.subject, JSON.stringify(e.data)].join('|');
}

function showState() {
  const el = document.getElementById('live');
  if (!el) return;
  const values = [...states.values()].filter((v) => v !== 'absent');
  const live = values.filter((v) => v === 'live').length;
  el.dataset.state = live && live === values.length ? 'live' : 'down';
  el.textContent = live === values.length && live ? 'live' : `reconnecting (${live}/${values.length} streams)`;
}

export function start() {
  if (started) return;
  started = true;
  for (const path of STREAMS) {
    states.set(path, 'down');
    follow(path, {
      onState: (path, state) => {
        states.set(path, state);
        showState();
      },
      onEvent: (envelope) => {
        const k = key(envelope);
        if (seen.has(k)) return;
        seen.add(k);
        events.push(envelope);
        if (events.length > KEEP) seen.delete(key(events.shift()));
        for (const l of listeners) l(envelope);
      },
    });
  }
  showState();
}

/** Every event kept (oldest first). */
export function recent() {
  return events.slice();
}

/** Calls `listener(envelope)` for every new event until the returned function is called. */
export function listen(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** The streams and their states. */
export function streamStates() {
  return new Map(states);
}
