// Walking-skeleton demo: loads the wasm client, connects to the conversation's
// Durable Object, and shows each line coming back with its stored seq.
import init, { Connection } from './pkg/ackline.js';

const params = new URLSearchParams(location.search);
const conversation = params.get('c') || 'lobby';
const user = params.get('user') || 'guest';
const device = params.get('device') || `web-${Math.random().toString(36).slice(2, 10)}`;

const statusEl = document.getElementById('status');
const list = document.getElementById('messages');

function setStatus(state, text) {
  statusEl.dataset.state = state;
  statusEl.textContent = text;
}

function show(text, cls) {
  const li = document.createElement('li');
  if (cls) li.className = cls;
  li.textContent = text;
  list.append(li);
  list.scrollTop = list.scrollHeight;
  return li;
}

// Dev-only: the local edge mints tokens when ACKLINE_DEV_TOKENS=1. A real app
// gets its token from its own backend.
async function devToken() {
  const res = await fetch('/v1/dev/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user, device, conversations: [conversation] }),
  });
  const body = await res.json();
  if (!res.ok) throw Object.assign(new Error(body.message), { code: body.error });
  return body.token;
}

await init();
const wsUrl = new URL(`/v1/conversations/${encodeURIComponent(conversation)}/connect`, location.href);
wsUrl.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';

let conn;
try {
  wsUrl.search = new URLSearchParams({ access_token: await devToken() }).toString();
  conn = await Connection.open(wsUrl.href, (frame) => {
    if (frame.type === 'welcome') statusEl.dataset.head = String(frame.head);
    if (frame.type === 'error') show(`error ${frame.code}: ${frame.message}`, 'error');
  });
  setStatus('open', `connected to ${conversation} (${statusEl.dataset.head} stored)`);
  window.ackline = conn; // for tests and curious users
} catch (e) {
  setStatus('error', `offline: ${e.message}`);
}

document.getElementById('composer').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = document.getElementById('body');
  const body = input.value;
  input.value = '';
  const li = show(body);
  li.dataset.state = 'pending';
  try {
    const { seq } = await conn.send(body);
    li.dataset.seq = String(seq);
    li.dataset.state = 'sent';
    const tag = document.createElement('span');
    tag.className = 'seq';
    tag.textContent = `#${seq}`;
    li.prepend(tag);
  } catch (e) {
    li.classList.add('error');
    li.title = `${e.code}: ${e.message}`;
  }
});
