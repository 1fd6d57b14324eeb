// Ackline demo chat. Uses the `ackline` package exactly as an app would: open a
// client with a token, join a conversation, render its events. No framework.
//
// URL parameters: ?user=ann&c=lobby[&device=ann-laptop]. Without ?user a join
// form asks for a name. Tests (and curious users) find the client, the
// conversation and a few helpers on `window.ackline`.
import init, { Ackline } from './pkg/ackline.js';

const ID = /^[A-Za-z0-9_.-]{1,64}$/;
const params = new URLSearchParams(location.search);
const conversation = params.get('c') || 'lobby';
const user = params.get('user') || '';

const $ = (sel) => document.querySelector(sel);
const appEl = $('#app');
const statusEl = $('#status');
const bannerEl = $('#banner');
const scroller = $('#scroller');
const list = $('#messages'); // stored messages, in seq order
const outgoing = $('#outgoing'); // own messages not stored yet, in send order
const olderEl = $('#older');
const offlineSwitch = $('#offline-switch');

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
// Inline SVG ticks (no emoji font needed).
const svg = (w, body) => `<svg viewBox="0 0 ${w} 12" width="${w}" height="12" aria-hidden="true" fill="none" stroke="currentColor" stroke-width="1.7" stroke-linecap="round" stroke-linejoin="round">${body}</svg>`;
const TICKS = {
  pending: svg(12, '<circle cx="6" cy="6" r="4.8"/><path d="M6 3.3V6l1.8 1.2"/>'),
  sent: svg(14, '<path d="M1.5 6.5l3.5 3.5L12.5 2"/>'),
  delivered: svg(18, '<path d="M1.5 6.5l3.5 3.5L12.5 2"/><path d="M8.5 9.2l.8.8L16.5 2"/>'),
  failed: svg(12, '<circle cx="6" cy="6" r="4.8"/><path d="M6 3.2v3.3M6 8.7v.1"/>'),
};
const TICK_TITLES = {
  pending: 'Queued on this device, not yet stored by the server',
  sent: 'Stored by the server',
  delivered: 'Stored on a device of every other member',
  failed: 'The server refused this message',
};
const RANK = { pending: 0, sent: 1, delivered: 2, failed: 3 };

// ---- join form (no ?user) -------------------------------------------------

if (!user || !ID.test(user)) {
  appEl.dataset.view = 'join';
  $('#join').hidden = false;
  $('#join-c').value = conversation;
  $('#join-user').value = user;
  $('#join-user').focus();
  $('#join').addEventListener('submit', (event) => {
    event.preventDefault();
    const next = new URLSearchParams({ c: $('#join-c').value.trim(), user: $('#join-user').value.trim() });
    location.search = next.toString();
  });
} else {
  await start();
}

// ---- chat -----------------------------------------------------------------

async function start() {
  // One device id per browser profile and user, kept across reloads.
  const deviceKey = `ackline-demo-device-${user}`;
  const device = params.get('device') || localStorage.getItem(deviceKey) || `${user}-${Math.random().toString(36).slice(2, 8)}`;
  localStorage.setItem(deviceKey, device);
  const dbName = `ackline-demo-${user}-${device}`;

  appEl.dataset.view = 'chat';
  scroller.hidden = false;
  $('#composer').hidden = false;
  $('#room-name').textContent = `#${conversation} · ${user}`;
  $('#room-name').title = `device ${device}`;
  document.title = `#${conversation} · Ackline`;

  const rowsBySeq = new Map(); // seq -> <li>
  const rowsById = new Map(); // client message id -> <li> (stored or outgoing)
  const ownStatus = new Map(); // own message id -> best status reported
  // Own messages the server has not stored yet. (The client's status `outbox`
  // counts every message not yet delivered, sent ones included.)
  const unsent = new Set();
  // What the `message` event stream looked like: each seq once, ascending.
  // `resets` counts inbox resets after a divergence (the stream starts over then).
  const stats = { messageEvents: 0, lastEventSeq: 0, outOfOrder: [], conflicts: [], historyPages: 0, resets: 0 };
  let stick = true; // keep the view at the bottom while the user is there
  let conn = { state: 'connecting', outbox: 0, lastError: null };
  let error = null; // { code, message } shown until dismissed
  let fatal = false; // the client could not start: nothing to dismiss or retry
  let heldOffline = false;
  let loadingOlder = null;
  let divergence = null; // { seq, serverHead } from the `diverged` event, until reset

  // -- rows --

  function hue(name) {
    let h = 0;
    for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
    return h;
  }

  function newRow(id, who, body) {
    const li = document.createElement('li');
    li.className = 'msg';
    li.dataset.id = id;
    li.innerHTML = '<div class="bubble"><div class="meta"><span class="who"></span><span class="seq"></span></div>'
      + '<div class="body"></div><div class="foot"><time></time><span class="tick"></span></div></div>';
    li.querySelector('.who').textContent = who;
    li.querySelector('.body').textContent = body;
    li.style.setProperty('--hue', hue(who));
    rowsById.set(id, li);
    return li;
  }

  function setState(li, state) {
    const current = li.dataset.state;
    if (current && current !== 'received' && RANK[state] < RANK[current]) return; // ticks never go back
    li.dataset.state = state;
    const tick = li.querySelector('.tick');
    tick.innerHTML = TICKS[state] || '';
    tick.title = TICK_TITLES[state] || '';
  }

  function setTime(li, at) {
    const t = li.querySelector('time');
    const date = new Date(at);
    t.dateTime = date.toISOString();
    t.textContent = timeFormat.format(date);
    t.title = dateFormat.format(date);
  }

  function seqOf(li) {
    return Number(li.dataset.seq);
  }

  /** Puts a stored row in `list`, which stays sorted by seq. */
  function placeStored(li, seq) {
    const kids = list.children;
    if (kids.length === 0 || seqOf(kids[kids.length - 1]) < seq) {
      list.append(li);
      return;
    }
    let lo = 0;
    let hi = kids.length; // first child with a larger seq
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (seqOf(kids[mid]) < seq) lo = mid + 1; else hi = mid;
    }
    list.insertBefore(li, kids[lo]);
  }

  /** Shows a stored message once (history pages and live events may overlap). */
  function showStored(m) {
    const existing = rowsBySeq.get(m.seq);
    if (existing) {
      if (existing.dataset.id !== m.id) stats.conflicts.push({ seq: m.seq, shown: existing.dataset.id, got: m.id });
      return existing;
    }
    const ownUser = m.user === user;
    let li = m.mine ? rowsById.get(m.id) : undefined;
    if (li && li.dataset.seq) {
      // Same id already shown under another seq: the server stored it twice.
      stats.conflicts.push({ seq: m.seq, id: m.id, shownAt: li.dataset.seq });
      li = undefined;
    }
    if (!li) li = newRow(m.id, m.user, m.body);
    li.classList.toggle('own', ownUser);
    li.dataset.seq = String(m.seq);
    li.dataset.user = m.user;
    li.dataset.mine = m.mine ? '1' : '0';
    li.querySelector('.seq').textContent = `#${m.seq}`;
    li.querySelector('.who').textContent = m.mine ? 'you' : (ownUser ? `${m.user} (other device)` : m.user);
    setTime(li, m.at);
    if (m.mine) {
      if (unsent.delete(m.id)) statusSoon();
      // The message says how far it got (also when read back after a reload);
      // an update seen meanwhile may be newer.
      const known = ownStatus.get(m.id);
      const stored = m.status || 'sent';
      setState(li, known && RANK[known] > RANK[stored] ? known : stored);
    } else {
      setState(li, 'received');
    }
    rowsBySeq.set(m.seq, li);
    placeStored(li, m.seq);
    return li;
  }

  function showPending(p) {
    if (rowsById.has(p.id)) return;
    const known = ownStatus.get(p.id);
    if (!known || known === 'pending') unsent.add(p.id);
    const li = newRow(p.id, 'you', p.body);
    li.classList.add('own');
    li.dataset.mine = '1';
    li.dataset.user = user;
    setTime(li, p.created);
    setState(li, ownStatus.get(p.id) || 'pending');
    outgoing.append(li);
  }

  // -- scrolling and older history --

  function nearBottom() {
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  }

  let scrollQueued = false;
  function followBottom() {
    if (!stick || scrollQueued) return;
    scrollQueued = true;
    setTimeout(() => {
      scrollQueued = false;
      if (stick) scroller.scrollTop = scroller.scrollHeight;
    }, 0);
  }

  function oldestSeq() {
    return list.firstElementChild ? seqOf(list.firstElementChild) : undefined;
  }

  function historyDone() {
    return oldestSeq() === 1;
  }

  function updateOlder() {
    olderEl.dataset.state = loadingOlder ? 'loading' : historyDone() ? 'done' : list.firstElementChild ? 'idle' : 'empty';
  }

  /** Loads the page below the oldest shown message; resolves with how many rows it added. */
  function loadOlder() {
    if (loadingOlder) return loadingOlder;
    const before = oldestSeq();
    if (before === undefined || before <= 1) return Promise.resolve(0);
    loadingOlder = (async () => {
      updateOlder();
      try {
        const page = await room.history({ before, limit: 50 });
        stats.historyPages += 1;
        const fromBottom = scroller.scrollHeight - scroller.scrollTop;
        let added = 0;
        for (const m of page) {
          if (!rowsBySeq.has(m.seq)) added += 1;
          showStored(m);
        }
        if (!stick) scroller.scrollTop = scroller.scrollHeight - fromBottom; // keep the reader's place
        return added;
      } catch (e) {
        showError(e);
        return 0;
      } finally {
        loadingOlder = null;
        updateOlder();
      }
    })();
    return loadingOlder;
  }

  /** Loads older pages until seq 1 is shown (or nothing more comes). */
  async function loadAll() {
    while (!historyDone()) {
      if ((await loadOlder()) === 0) break;
    }
    return historyDone();
  }

  scroller.addEventListener('scroll', () => {
    stick = nearBottom();
    if (scroller.scrollTop < 200 && !historyDone()) {
      loadOlder().then((added) => { if (added && scroller.scrollTop < 200) scroller.dispatchEvent(new Event('scroll')); });
    }
  }, { passive: true });
  olderEl.querySelector('button').addEventListener('click', () => loadOlder());

  // -- connection indicator and banner --

  function renderStatus() {
    statusEl.dataset.state = conn.state;
    statusEl.dataset.outbox = String(conn.outbox);
    statusEl.dataset.unsent = String(unsent.size);
    statusEl.querySelector('.label').textContent = { open: 'online', connecting: 'connecting…', offline: 'offline', auth: 'signed out', stopped: 'no access', closed: 'closed' }[conn.state] || conn.state;
    const badge = statusEl.querySelector('.outbox');
    badge.hidden = unsent.size === 0;
    badge.textContent = `${unsent.size} unsent`;
    statusEl.title = `${unsent.size} unsent, ${conn.outbox} not yet delivered`
      + (conn.lastError ? `; last error: ${conn.lastError.code}: ${conn.lastError.message}` : '');
    renderBanner();
  }

  let statusQueued = false;
  function statusSoon() {
    if (statusQueued) return;
    statusQueued = true;
    setTimeout(() => { statusQueued = false; renderStatus(); }, 0);
  }

  function renderBanner() {
    const n = unsent.size;
    const queued = n ? ` ${n} message${n === 1 ? '' : 's'} will be sent when it is back.` : '';
    let kind = '';
    let text = '';
    if (divergence) {
      kind = 'diverged';
      text = `This device's copy of the conversation differs from the server's from #${divergence.seq} on `
        + `(the server is at #${divergence.serverHead}). New messages are held back until you reset it; `
        + 'unsent messages are kept.';
    } else if (error) {
      kind = 'error';
      text = `Error ${error.code}: ${error.message}`;
    } else if (conn.state === 'auth') {
      kind = 'error';
      text = `The server refused this sign-in (${conn.lastError?.message || 'unauthorized'}). It is tried again when the page comes back online; reload to sign in again.${queued}`;
    } else if (conn.state === 'stopped') {
      kind = 'error';
      text = `This conversation cannot be joined: ${conn.lastError?.message || 'refused'}.`;
    } else if (heldOffline) {
      kind = 'offline';
      text = `This tab is offline (demo switch).${queued || ' New messages wait in the outbox.'}`;
    } else if (conn.state === 'offline' || conn.state === 'closed') {
      kind = 'offline';
      text = `Offline. Reconnecting…${queued}`;
    } else if (conn.state === 'connecting' && conn.everOpen) {
      kind = 'offline';
      text = `Connection lost. Reconnecting…${queued}`;
    }
    bannerEl.hidden = !kind;
    bannerEl.dataset.kind = kind;
    bannerEl.querySelector('.text').textContent = text;
    bannerEl.querySelector('.dismiss').hidden = kind !== 'error' || fatal;
    bannerEl.querySelector('.reset').hidden = kind !== 'diverged';
  }

  /** Forgets every stored row (the outgoing ones stay): the view of a reset inbox. */
  function clearStored() {
    for (const li of list.children) {
      if (rowsById.get(li.dataset.id) === li) rowsById.delete(li.dataset.id);
    }
    list.replaceChildren();
    rowsBySeq.clear();
    stats.lastEventSeq = 0;
    updateOlder();
  }

  /** Repairs a diverged conversation: the stored copy is dropped and rebuilt from the server. */
  async function resetInbox() {
    const button = bannerEl.querySelector('.reset');
    button.disabled = true;
    // Cleared before the call: every `message` event after it belongs to the new copy.
    clearStored();
    divergence = null;
    stats.resets += 1;
    renderBanner();
    try {
      await room.resetInbox();
    } catch (e) {
      showError(e);
    } finally {
      button.disabled = false;
    }
  }

  bannerEl.querySelector('.reset').addEventListener('click', () => resetInbox());

  function showError(e) {
    error = { code: e.code || 'error', message: e.message || String(e) };
    renderBanner();
  }

  bannerEl.querySelector('.dismiss').addEventListener('click', () => {
    error = null;
    renderBanner();
  });

  // -- client --

  // Dev-only: the local edge mints tokens when ACKLINE_DEV_TOKENS=1. A real app
  // gets its token from its own backend. Called on every (re)connect.
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

  let client;
  let room;
  try {
    await init();
    client = await Ackline.open({ url: location.origin, token: devToken, dbName });
    client.on('status', (s) => {
      if (s.conversation !== conversation) return;
      conn = { ...s, everOpen: conn.everOpen || s.state === 'open' };
      renderStatus();
    });
    client.on('error', (e) => {
      if (e.conversation && e.conversation !== conversation) return;
      if (e.code === 'diverged') return; // the `diverged` banner offers the repair
      showError(e);
    });
    room = await client.conversation(conversation);
    room.on('message', (m) => {
      stats.messageEvents += 1;
      if (m.seq <= stats.lastEventSeq && stats.outOfOrder.length < 100) stats.outOfOrder.push([stats.lastEventSeq, m.seq]);
      stats.lastEventSeq = Math.max(stats.lastEventSeq, m.seq);
      showStored(m);
      updateOlder();
      followBottom();
    });
    room.on('pending', (p) => {
      showPending(p);
      statusSoon();
      followBottom();
    });
    room.on('update', (u) => {
      const best = ownStatus.get(u.id);
      if (!best || RANK[u.status] > RANK[best]) ownStatus.set(u.id, u.status);
      if (u.status !== 'pending' && unsent.delete(u.id)) statusSoon();
      const li = rowsById.get(u.id);
      if (li) setState(li, u.status);
      if (u.status === 'failed' && li) li.title = `refused: ${u.code}`;
    });
    room.on('diverged', (d) => {
      divergence = d;
      renderBanner();
    });
    for (const p of room.pending()) showPending(p);
    renderStatus();
    for (const m of await room.history({ limit: 50 })) showStored(m);
    updateOlder();
    scroller.scrollTop = scroller.scrollHeight;
    offlineSwitch.disabled = false;
  } catch (e) {
    fatal = true;
    conn = { state: 'closed', outbox: 0, lastError: null };
    showError(e);
    renderStatus();
  }

  offlineSwitch.addEventListener('change', () => {
    heldOffline = offlineSwitch.checked;
    client.setOnline(!heldOffline);
    renderBanner();
  });

  $('#composer').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('#body');
    const body = input.value;
    if (!body.trim() || !room) return;
    input.value = '';
    stick = true;
    room.send(body).catch(showError);
  });

  window.ackline = {
    client,
    room,
    app: { user, device, conversation, dbName, stats, loadOlder, loadAll, historyDone, resetInbox },
  };
  appEl.dataset.ready = room ? '1' : '0';
}
