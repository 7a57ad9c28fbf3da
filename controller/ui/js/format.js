// Numbers, durations and times as people read them.

export function count(n) {
  if (n === undefined || n === null) return '–';
  if (n >= 1e9) return (n / 1e9).toFixed(1) + ' G';
  if (n >= 1e6) return (n / 1e6).toFixed(1) + ' M';
  if (n >= 1e4) return (n / 1e3).toFixed(1) + ' k';
  if (!Number.isInteger(n) && n < 10) return n.toFixed(n < 1 ? 2 : 1);
  return String(Math.round(n));
}

export function bytes(n) {
  if (!n) return '0 B';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + ' ' + units[i];
}

export function ms(v) {
  if (v === undefined || v === null) return '–';
  if (v === 0) return '0';
  if (v < 1) return v.toFixed(3) + ' ms';
  if (v < 100) return v.toFixed(1) + ' ms';
  return Math.round(v) + ' ms';
}

export function percent(rate) {
  if (!rate) return '0 %';
  const p = rate * 100;
  return (p < 1 ? p.toFixed(2) : p.toFixed(1)) + ' %';
}

/** HH:MM:SS of an RFC 3339 time or Unix ms, local time. */
export function clock(t) {
  const d = typeof t === 'number' ? new Date(t) : new Date(t);
  if (Number.isNaN(d.getTime())) return String(t ?? '');
  return d.toLocaleTimeString([], { hour12: false });
}

export function label(serviceType) {
  return String(serviceType || 'unknown').replace(/_/g, ' ');
}
