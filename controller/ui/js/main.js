// The console's entry: hash routes (#/map, #/service/NAME, #/infra, #/events), the
// navigation's current page, the skip link, and the shared event streams.

import * as map from './map.js';
import * as service from './service.js';
import * as infra from './infra.js';
import * as feed from './feed.js';
import { forgetToken } from './api.js';
import { start } from './live.js';

const main = document.getElementById('main');
let unmount = null;

function route() {
  const hash = location.hash || '#/map';
  if (!hash.startsWith('#/')) return;
  const [page, ...rest] = hash.slice(2).split('/');
  if (unmount) unmount();
  unmount = null;
  let current = page;
  if (page === 'service' && rest.length) {
    const name = decodeURIComponent(rest.join('/'));
    document.title = `${name} · weft console`;
    unmount = service.mount(main, name);
    current = 'map';
  } else if (page === 'infra') {
    document.title = 'Shards, networks, migrations · weft console';
    unmount = infra.mount(main);
  } else if (page === 'events') {
    document.title = 'Events · weft console';
    unmount = feed.mount(main);
  } else {
    document.title = 'Topology map · weft console';
    unmount = map.mount(main);
    current = 'map';
  }
  document.body.dataset.page = page === 'service' ? 'service' : current;
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === current) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

document.getElementById('skip').addEventListener('click', (e) => {
  e.preventDefault();
  main.focus();
});
document.getElementById('forget').addEventListener('click', () => {
  forgetToken();
  location.reload();
});
window.addEventListener('hashchange', () => {
  route();
  main.focus({ preventScroll: true });
});
route();
start();
