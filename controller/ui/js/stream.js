// Server-sent events read with fetch() so that the bearer token travels in the
// Authorization header (EventSource cannot set headers, and a token in the URL would be
// logged). Frames are parsed as the SSE format says; reconnects resume with
// Last-Event-ID; a 401 asks for a token; a 404 means the controller has no such stream.

import { askToken, headers } from './api.js';

function parseFrames(buffer, dispatch) {
  // Frames end with a blank line; keep what is not complete yet.
  const parts = buffer.split(/\r\n\r\n|\n\n|\r\r/);
  const rest = parts.pop();
  for (const frame of parts) {
    const event = { id: null, type: 'message', data: [] };
    for (const line of frame.split(/\r\n|\n|\r/)) {
      if (!line || line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? '' : line.slice(i + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'data') event.data.push(value);
      else if (field === 'event') event.type = value;
      else if (field === 'id') event.id = value;
    }
    if (event.data.length) dispatch(event);
  }
  return rest;
}

/**
 * Follows the stream at `path` until `close()`: `onEvent(envelope, sseId)` for each event
 * (the CloudEvents envelope: type, id, time, data, ...), `onState(path, state)` with
 * 'live', 'down' (retrying) or 'absent' (404).
 */
export function follow(path, { onEvent, onState }) {
  const controller = new AbortController();
  let lastId = null;
  let delay = 1000;
  const run = async () => {
    while (!controller.signal.aborted) {
      try {
        const extra = { Accept: 'text/event-stream' };
        if (lastId !== null) extra['Last-Event-ID'] = lastId;
        const response = await fetch(path, { headers: headers(extra), signal: controller.signal, cache: 'no-store', credentials: 'omit' });
        if (response.status === 401) {
          onState(path, 'down');
          await askToken('The event stream ' + path + ' needs a bearer token.');
          continue;
        }
        if (response.status === 404) {
          onState(path, 'absent');
          return;
        }
        if (!response.ok || !response.body) throw new Error(path + ': ' + response.status);
        onState(path, 'live');
        delay = 1000;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer = parseFrames(buffer + value, (frame) => {
            if (frame.id !== null) lastId = frame.id;
            let envelope;
            try {
              envelope = JSON.parse(frame.data.join('\n'));
            } catch {
              envelope = { type: frame.type, data: frame.data.join('\n') };
            }
            if (!envelope || typeof envelope !== 'object') envelope = { type: frame.type, data: envelope };
            if (!envelope.type) envelope.type = frame.type;
            onEvent(envelope, frame.id);
          });
        }
        throw new Error(path + ': the stream ended');
      } catch (e) {
        if (controller.signal.aborted) return;
        onState(path, 'down');
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 15000);
      }
    }
  };
  run();
  return { close: () => controller.abort() };
}
