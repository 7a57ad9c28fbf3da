// The REST API: every data call carries the bearer token kept in this tab's
// sessionStorage; a 401 opens the token form and the call is made again with the token
// given there.

const KEY = 'weft.console.token';

export class ApiError extends Error {
  constructor(status, detail, path) {
    super(`${path}: ${status} ${detail}`);
    this.status = status;
    this.detail = detail;
    this.path = path;
  }
}

export function token() {
  return sessionStorage.getItem(KEY) || '';
}

export function forgetToken() {
  sessionStorage.removeItem(KEY);
  updateForget();
}

function updateForget() {
  const b = document.getElementById('forget');
  if (b) b.hidden = !token();
}

let asking = null;

/** Shows the token form (once, however many calls wait) and resolves with the token. */
export function askToken(reason) {
  if (asking) return asking;
  const dialog = document.getElementById('token-dialog');
  const form = document.getElementById('token-form');
  const input = document.getElementById('token-input');
  document.getElementById('token-reason').textContent = reason || 'The controller asks for a bearer token.';
  asking = new Promise((resolve) => {
    const done = (e) => {
      e.preventDefault();
      const t = input.value.trim();
      if (!t) return;
      sessionStorage.setItem(KEY, t);
      input.value = '';
      form.removeEventListener('submit', done);
      dialog.close();
      asking = null;
      updateForget();
      resolve(t);
    };
    form.addEventListener('submit', done);
    // Escape must not leave the console without a way on: the form stays until answered.
    dialog.addEventListener('cancel', (e) => e.preventDefault(), { once: true });
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
  return asking;
}

/** The headers of a data call. */
export function headers(extra) {
  const h = { Accept: 'application/json', ...(extra || {}) };
  const t = token();
  if (t) h.Authorization = 'Bearer ' + t;
  return h;
}

async function problem(response) {
  try {
    const body = await response.json();
    return body.detail || body.title || JSON.stringify(body);
  } catch {
    return response.statusText;
  }
}

/** GET `path` as JSON; asks for a token on 401 and tries again. */
export async function get(path, { signal } = {}) {
  for (;;) {
    const response = await fetch(path, { headers: headers(), signal, cache: 'no-store', credentials: 'omit' });
    if (response.status === 401) {
      await askToken(await problem(response));
      continue;
    }
    if (!response.ok) throw new ApiError(response.status, await problem(response), path);
    return response.json();
  }
}

updateForget();
