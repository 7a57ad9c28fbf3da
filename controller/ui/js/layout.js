// A deterministic layered layout: services in columns by dependency depth (callers left,
// the services they call right), cycles broken at the edge that closes them, each column
// ordered by where its callers sit, then by service type and name.

export const TYPE_ORDER = [
  'client', 'load_balancer', 'api_gateway', 'web_server', 'microservice',
  'message_queue', 'cache', 'database', 'external_api',
];

function typeRank(t) {
  const i = TYPE_ORDER.indexOf(t);
  return i < 0 ? TYPE_ORDER.length : i;
}

/**
 * `nodes`: [{name, type}], `edges`: [{source, target}]. Answers {layers: [[name]],
 * position: Map(name -> {layer, index})}; the same input always gives the same layout.
 */
export function layered(nodes, edges) {
  const byName = new Map(nodes.map((n) => [n.name, n]));
  const names = [...byName.keys()].sort();
  const out = new Map(names.map((n) => [n, []]));
  const indegree = new Map(names.map((n) => [n, 0]));
  for (const e of edges) {
    if (!byName.has(e.source) || !byName.has(e.target) || e.source === e.target) continue;
    out.get(e.source).push(e.target);
  }
  for (const n of names) out.get(n).sort();
  // Depth-first from the services nobody calls (then any left): an edge to a service on
  // the current path closes a cycle and is left out of the layering.
  const forward = new Map(names.map((n) => [n, []]));
  const colour = new Map();
  const visit = (root) => {
    const stack = [[root, 0]];
    colour.set(root, 1);
    while (stack.length) {
      const top = stack[stack.length - 1];
      const [n, i] = top;
      const next = out.get(n)[i];
      if (next === undefined) {
        colour.set(n, 2);
        stack.pop();
        continue;
      }
      top[1] = i + 1;
      const c = colour.get(next);
      if (c === 1) continue; // back edge
      forward.get(n).push(next);
      if (!c) {
        colour.set(next, 1);
        stack.push([next, 0]);
      }
    }
  };
  for (const n of names) for (const t of out.get(n)) indegree.set(t, indegree.get(t) + 1);
  for (const n of names) if (indegree.get(n) === 0 && !colour.has(n)) visit(n);
  for (const n of names) if (!colour.has(n)) visit(n);
  // Longest path from a source over the forward edges (Kahn's order, by name).
  const inForward = new Map(names.map((n) => [n, 0]));
  for (const n of names) for (const t of forward.get(n)) inForward.set(t, inForward.get(t) + 1);
  const layer = new Map(names.map((n) => [n, 0]));
  const ready = names.filter((n) => inForward.get(n) === 0);
  while (ready.length) {
    ready.sort();
    const n = ready.shift();
    for (const t of forward.get(n)) {
      layer.set(t, Math.max(layer.get(t), layer.get(n) + 1));
      inForward.set(t, inForward.get(t) - 1);
      if (inForward.get(t) === 0) ready.push(t);
    }
  }
  const depth = Math.max(0, ...layer.values());
  const layers = Array.from({ length: names.length ? depth + 1 : 0 }, () => []);
  for (const n of names) layers[layer.get(n)].push(n);
  const position = new Map();
  const callers = new Map(names.map((n) => [n, []]));
  for (const n of names) for (const t of out.get(n)) callers.get(t).push(n);
  layers.forEach((column, li) => {
    const weight = (n) => {
      const placed = callers.get(n).filter((c) => position.has(c)).map((c) => position.get(c).index);
      return placed.length ? placed.reduce((a, b) => a + b, 0) / placed.length : -1;
    };
    column.sort((a, b) => weight(a) - weight(b)
      || typeRank(byName.get(a).type) - typeRank(byName.get(b).type)
      || (a < b ? -1 : a > b ? 1 : 0));
    column.forEach((n, index) => position.set(n, { layer: li, index }));
  });
  return { layers, position };
}
