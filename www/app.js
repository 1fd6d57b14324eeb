// Ackline demo chat. Uses the `ackline` package exactly as an app would:
// open a client with a token, join a conversation, render its events.
import init, { Ackline } from './pkg/ackline.js';

const params = new URLSearchParams(location.search);
const conversation = params.get('c') || 'lobby';
const user = params.get('user') || 'guest';
// One device id per browser profile and user, kept across reloads.
const deviceKey = `ackline-demo-device-${user}`;
const device = params.get('device') || localStorage.getItem(deviceKey) || `${user}-${Math.random().toString(36).slice(2, 8)}`;
localStorage.setItem(deviceKey, device);

const statusEl = document.getElementById('status');
const list = document.getElementById('messages');
const rows = new Map(); // client message id -> <li>

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

function row(id) {
  let li = rows.get(id);
  if (!li) {
    li = document.createElement('li');
    li.dataset.id = id;
    li.innerHTML = '<span class="seq"></span><span class="who"></span><span class="body"></span><span class="tick"></span>';
    rows.set(id, li);
  }
  return li;
}

function place(li) {
  // Stored messages in seq order, pending ones (no seq yet) at the end.
  const seq = Number(li.dataset.seq || Infinity);
  const after = [...list.children].find((other) => other !== li && Number(other.dataset.seq || Infinity) > seq);
  if (after) list.insertBefore(li, after); else list.append(li);
  list.scrollTop = list.scrollHeight;
}

function setState(li, state) {
  li.dataset.state = state;
  li.querySelector('.tick').textContent = { pending: '🕓', sent: '✓', delivered: '✓✓', failed: '⚠' }[state] || '';
}

function showStored(m) {
  const li = row(m.id);
  li.dataset.seq = String(m.seq);
  li.querySelector('.seq').textContent = `#${m.seq}`;
  li.querySelector('.who').textContent = m.mine ? 'you' : m.user;
  li.querySelector('.body').textContent = m.body;
  li.title = new Date(m.at).toLocaleString();
  if (!m.mine) setState(li, 'received');
  else if (!['delivered'].includes(li.dataset.state)) setState(li, 'sent');
  place(li);
}

function showPending(p) {
  const li = row(p.id);
  if (li.dataset.seq) return;
  li.querySelector('.who').textContent = 'you';
  li.querySelector('.body').textContent = p.body;
  setState(li, 'pending');
  place(li);
}

await init();
let client;
let room;
try {
  client = await Ackline.open({ url: location.origin, token: devToken, dbName: `ackline-demo-${user}-${device}` });
  client.on('status', (s) => {
    statusEl.dataset.state = s.state;
    statusEl.dataset.outbox = String(s.outbox);
    statusEl.textContent = `${s.state}${s.outbox ? ` · ${s.outbox} unsent` : ''}${s.lastError ? ` · ${s.lastError.code}` : ''}`;
  });
  room = await client.conversation(conversation);
  room.on('message', showStored);
  room.on('pending', showPending);
  room.on('update', (u) => {
    const li = row(u.id);
    if (u.seq) li.dataset.seq = String(u.seq);
    if (u.status !== 'pending' || !li.dataset.state) setState(li, u.status);
  });
  for (const p of room.pending()) showPending(p);
  for (const m of await room.history({ limit: 50 })) showStored(m);
  window.ackline = { client, room }; // for tests and curious users
} catch (e) {
  statusEl.dataset.state = 'error';
  statusEl.textContent = `error: ${e.code || ''} ${e.message}`;
}

document.getElementById('composer').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = document.getElementById('body');
  const body = input.value;
  input.value = '';
  try {
    await room.send(body);
  } catch (e) {
    statusEl.textContent = `send failed: ${e.code}: ${e.message}`;
  }
});
