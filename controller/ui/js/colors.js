// The console's colours: one per service type, and the error-rate scale of edges.

export const TYPE_COLORS = {
  client: '#546e7a',
  load_balancer: '#6a1b9a',
  api_gateway: '#8e24aa',
  web_server: '#1e6fc8',
  microservice: '#00796b',
  message_queue: '#d84315',
  cache: '#ad1457',
  database: '#283593',
  external_api: '#5d4037',
};
export const UNKNOWN_TYPE = '#616161';

export function typeColor(t) {
  return TYPE_COLORS[t] || UNKNOWN_TYPE;
}

// (error rate, colour): green without errors, amber at 2 %, red from 10 %.
const STOPS = [[0, [46, 139, 87]], [0.02, [217, 142, 4]], [0.1, [198, 40, 40]]];
export const ERROR_STOPS = [0, 0.01, 0.02, 0.05, 0.1];

export function errorColor(rate) {
  const r = Math.max(0, Number(rate) || 0);
  let rgb = STOPS[STOPS.length - 1][1];
  for (let i = 1; i < STOPS.length; i++) {
    const [x1, c1] = STOPS[i];
    const [x0, c0] = STOPS[i - 1];
    if (r <= x1) {
      const f = (r - x0) / (x1 - x0);
      rgb = c0.map((v, k) => Math.round(v + (c1[k] - v) * f));
      break;
    }
  }
  return '#' + rgb.map((v) => v.toString(16).padStart(2, '0')).join('');
}

/** Stroke width of an edge from its traffic (requests, or bytes where no request is known). */
export function edgeWidth(requests, bytes) {
  const amount = requests > 0 ? requests : (bytes || 0) / 1024;
  return Math.min(12, 1.5 + 1.6 * Math.log10(1 + amount));
}
