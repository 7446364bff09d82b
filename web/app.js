// app.js — the Chatlog web client: sign-in, the conversation list, one open
// conversation, the composer. It wires three things together:
//
//   conn.js   the chat.v1 session (WebSocket, Hello, reconnect with backoff)
//   store.js  what is known (conversations, messages by msg_id, pending
//             sends, receipts, typing, presence), with no DOM
//   REST      /api/v1 for what the WebSocket protocol has no frame for:
//             conversation details, older history pages, creating
//             conversations, uploading media and minting fresh media URLs
//
// After every Welcome (the first and each reconnect) every conversation is
// synced from the last msg_id it holds, pending messages are sent again with
// their client_msg_id (the server answers a repeat with the original Ack),
// and the open conversation is marked read. docs/web.md has the whole story.
//
// In a cluster (GET /api/v1/cluster lists every node's client URL) the page
// keeps the list of nodes, its own first: the WebSocket, the REST calls and
// uploads go to the node in use, and when it drops the socket moves to the
// next node (conn.js). The catch-up above is the same against any node:
// msg_ids are the same on all of them.
//
// Everything shown comes from the server and is inserted as text
// (textContent), never as HTML.
import { Store, TICK } from './store.js';
import { ChatSocket, nodeOrder, originOf, wsUrlOf } from './conn.js';

const TOKEN_KEY = 'chatlog.token';
const DEVICE_KEY = 'chatlog.device';
const PAGE = 50; // messages per history page (REST) and per first tail Sync
const SYNC_LIMIT = 200; // messages per SyncBatch while catching up
const MAX_BODY_BYTES = 65536; // the server's default max_body_bytes
const TYPING_RENEW_MS = 3000; // re-send Typing{active} while typing (server TTL 6 s)
const TYPING_IDLE_MS = 4000; // no keystroke for this long: Typing{active:false}
const MAX_MEDIA_BYTES = 16 * 1024 * 1024; // the server's default max_media_bytes
const MEDIA_PATH = /^(?:https?:\/\/[^/]+)?\/media\/([0-9a-f]{64})(?:\?|$)/; // a media_url of ours: its id
const CLUSTER_WITHIN_MS = 3000; // GET /api/v1/cluster at start; no answer: this node alone
// Errors on a Send that mean "try again with the same client_msg_id": 10
// unavailable (a cluster between leaders), 6 overloaded. The first retry
// waits SEND_RETRY_MS, each next one twice as long, up to SEND_RETRY_MAX_MS.
const RETRY_CODES = new Set([10, 6]);
const SEND_RETRY_MS = 250;
const SEND_RETRY_MAX_MS = 4000;

const $ = (id) => document.getElementById(id);

/** A DOM element: h('li', { class: 'x', dataset: { a: 1 } }, child, 'text'). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replace el's children; null/false children are left out (replaceChildren
 * itself would show them as text). */
function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

/** 16 random bytes as hex: a client_msg_id (crypto.randomUUID needs a secure
 * context; getRandomValues does not). */
function randomId() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** The claims of a JWT (not verified: the server does that), or null. */
function tokenClaims(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const json = atob(parts[1].replace(/-/g, '+').replace(/_/g, '/'));
    return JSON.parse(json);
  } catch {
    return null;
  }
}

function deviceId() {
  let d = localStorage.getItem(DEVICE_KEY);
  if (!d) {
    d = 'web-' + randomId().slice(0, 12);
    localStorage.setItem(DEVICE_KEY, d);
  }
  return d;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'short', day: 'numeric', month: 'short', year: 'numeric' });
const fmtTime = (ms) => (ms ? timeFmt.format(new Date(ms)) : '');
const dayKey = (ms) => { const d = new Date(ms); return `${d.getFullYear()}-${d.getMonth() + 1}-${d.getDate()}`; };

function lastSeenText(ms) {
  if (!ms) return 'offline';
  const d = new Date(ms);
  return dayKey(ms) === dayKey(Date.now()) ? `last seen today at ${fmtTime(ms)}` : `last seen ${dayFmt.format(d)} ${fmtTime(ms)}`;
}

const utf8Length = (s) => new TextEncoder().encode(s).length;

/** 48213 → "47 KB". */
function fmtSize(n) {
  if (!Number.isFinite(n) || n < 0) return '';
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

/** The media id in a media_url served by chatd, or '' for anything else. */
const mediaIdOf = (url) => (MEDIA_PATH.exec(url || '') || [])[1] || '';

// ---- protobuf ----

let types = null; // { ClientFrame, ServerFrame } from chat.proto
let nodes = [location.origin]; // the cluster's nodes (origins), this page's own first

/** The nodes to use, from GET /api/v1/cluster of this page's own node (no
 * token needed): its client_urls, own origin first (conn.js nodeOrder). A
 * single node, an old server or no answer in time: just this origin. */
async function loadNodes() {
  try {
    const res = await fetch('/api/v1/cluster', { cache: 'no-store', signal: AbortSignal.timeout(CLUSTER_WITHIN_MS) });
    const j = res.ok ? await res.json() : null;
    if (j?.enabled && Array.isArray(j.client_urls)) return nodeOrder(location.origin, j.client_urls);
  } catch (e) {
    console.warn('cluster:', e.message);
  }
  return [location.origin];
}

async function loadTypes() {
  // chat.proto is served next to this file (web/web.mk copies it from
  // proto/); protobufjs parses it here, so the schema has one source.
  const root = await protobuf.load('chat.proto');
  return {
    ClientFrame: root.lookupType('chat.v1.ClientFrame'),
    ServerFrame: root.lookupType('chat.v1.ServerFrame'),
  };
}

// ---- a signed-in session ----

class Session {
  constructor(token) {
    this.token = token;
    this.store = new Store();
    this.openId = 0;
    this.connState = 'connecting';
    this.connInfo = {};
    this.syncing = new Set(); // conv_ids with a Sync in flight
    this.olderLoading = new Set(); // conv_ids with a REST history page in flight
    this.fetching = new Set(); // conv_ids being fetched through REST
    this.deliverTimer = null;
    this.typingOut = { convId: 0, sentAt: 0, idle: null };
    this.away = false;
    this.renderQueued = false;
    this.scrollIntent = null; // 'bottom' | { keepFrom: {height, top} }
    this.flash = ''; // a transient notice in the pane (e.g. a failed REST call)
    // media id -> { url, ctype, size, state: 'loading'|'ok'|'error', minted }:
    // what a HEAD of the signed URL told (the message carries only the URL).
    this.media = new Map();
    this.nodes = nodes;
    this.socket = new ChatSocket({
      urls: this.nodes.map(wsUrlOf),
      token,
      deviceId: deviceId(),
      types,
      onFrame: (f) => this.onFrame(f),
      onState: (s, info) => this.onState(s, info),
    });
    this.secondTimer = setInterval(() => {
      // The retry countdown and typing expiry need a tick of their own.
      if (this.connState === 'waiting' || this.anyTyping()) this.render();
    }, 1000);
  }

  start() { this.socket.start(); }

  stop() {
    clearInterval(this.secondTimer);
    clearTimeout(this.saveTimer);
    clearTimeout(this.deliverTimer);
    clearTimeout(this.typingOut.idle);
    this.socket.stop();
    for (const c of this.store.convs.values()) {
      for (const p of c.pending.values()) if (p.preview) URL.revokeObjectURL(p.preview);
    }
  }

  /** The origin of the node in use (the one the socket is on or tries
   * next): REST calls and uploads go there. */
  get base() { return this.nodes[this.socket.at] || location.origin; }

  /** A URL on node `base` for fetch and for src/href: relative on this
   * page's own origin, absolute elsewhere. */
  href(base, path) { return base === location.origin ? path : base + path; }

  /** Where a media_url is loaded from: an absolute one from its node (in a
   * cluster a client sends the uploading node's URL: media are stored on the
   * node that took the upload), a path from the node in use. */
  mediaHref(url) { return url.startsWith('/') ? this.href(this.base, url) : url; }

  // ---- REST ----

  async api(method, path, body, base = this.base) {
    const headers = { Authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(this.href(base, `/api/v1${path}`), {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store',
    });
    let json = null;
    if (res.status !== 204) {
      try { json = await res.json(); } catch { json = null; }
    }
    if (res.status === 401) {
      signOut('The server no longer accepts this token (expired?). Sign in with a new one.');
      throw new Error('unauthorized');
    }
    if (!res.ok) {
      const e = new Error(json?.error?.message || `HTTP ${res.status}`);
      e.status = res.status;
      throw e;
    }
    return json;
  }

  /** POST /api/v1/media: the file's bytes as the body, its type as
   * Content-Type. Resolves to { media_id, url, size, content_type }; in a
   * cluster url is made absolute (the node that stores the object). */
  async upload(file) {
    const base = this.base;
    const res = await fetch(this.href(base, '/api/v1/media'), {
      method: 'POST',
      headers: { Authorization: `Bearer ${this.token}`, 'Content-Type': file.type || 'application/octet-stream' },
      body: file,
      cache: 'no-store',
    });
    let json = null;
    try { json = await res.json(); } catch { json = null; }
    if (res.status === 401) {
      signOut('The server no longer accepts this token (expired?). Sign in with a new one.');
      throw new Error('unauthorized');
    }
    if (res.status === 413) throw new Error('the file is larger than the server accepts');
    if (!res.ok || !json?.url) throw new Error(json?.error?.message || `upload failed (HTTP ${res.status})`);
    if (this.nodes.length > 1 && json.url.startsWith('/')) json.url = base + json.url;
    return json;
  }

  /** What is known of the media a message points at; starts finding out
   * (a HEAD of its signed URL, or of a freshly minted one when that one has
   * expired) the first time, and renders again when it knows. */
  mediaInfo(id, url) {
    let info = this.media.get(id);
    if (!info) {
      info = { url: this.mediaHref(url), ctype: '', size: -1, state: 'loading', minted: false };
      this.media.set(id, info);
      this.probeMedia(id, info);
    }
    return info;
  }

  async probeMedia(id, info) {
    try {
      let res = await fetch(info.url, { method: 'HEAD', cache: 'no-store' });
      if (res.status === 403 && !info.minted) {
        info.url = await this.mintMediaUrl(id, info.url);
        info.minted = true;
        res = await fetch(info.url, { method: 'HEAD', cache: 'no-store' });
      }
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      info.ctype = (res.headers.get('Content-Type') || '').toLowerCase();
      info.size = Number(res.headers.get('Content-Length') ?? -1);
      info.state = 'ok';
    } catch (e) {
      console.warn(`media ${id}:`, e.message);
      info.state = 'error';
    }
    this.render();
  }

  /** GET /api/v1/media/<id>/url: a fresh signed URL (signed URLs expire),
   * from the node the old one points at (`from`, an absolute URL) or else
   * the node in use. */
  async mintMediaUrl(id, from = '') {
    const base = (from && !from.startsWith('/') && originOf(from)) || this.base;
    const r = await this.api('GET', `/media/${id}/url`, undefined, base);
    return this.href(base, r.url);
  }

  /** An inline image failed to load (its URL expired while the page was
   * open, say): mint a fresh URL once and try again. */
  async imageFailed(id) {
    const info = this.media.get(id);
    if (!info || info.state !== 'ok') return;
    if (info.minted) {
      info.state = 'error';
      this.render();
      return;
    }
    info.minted = true;
    try {
      info.url = await this.mintMediaUrl(id, info.url);
    } catch (e) {
      console.warn(`media ${id}:`, e.message);
      info.state = 'error';
    }
    this.render();
  }

  /** GET /api/v1/conversations: details the Welcome lacks (creator,
   * created_at), and conversations created since. */
  async refreshConvs() {
    try {
      const { conversations } = await this.api('GET', '/conversations');
      for (const o of conversations) {
        const c = this.store.conv(o.conv_id, true);
        c.applyState(o);
        this.syncConv(c);
      }
      this.render();
    } catch (e) {
      console.warn('conversation list:', e.message);
    }
  }

  /** A conversation this client has not heard of (someone else created it and
   * a message or typing arrived): fetch it, then sync it. */
  async fetchConv(convId) {
    if (this.fetching.has(convId)) return;
    this.fetching.add(convId);
    try {
      const o = await this.api('GET', `/conversations/${convId}`);
      const c = this.store.conv(o.conv_id, true);
      c.applyState(o);
      this.syncConv(c);
      this.render();
    } catch (e) {
      console.warn(`conversation ${convId}:`, e.message);
    } finally {
      this.fetching.delete(convId);
    }
  }

  async createConv(kind, members, title) {
    const body = { kind, members };
    if (kind === 'group' && title) body.title = title;
    const o = await this.api('POST', '/conversations', body);
    const c = this.store.conv(o.conv_id, true);
    c.applyState(o);
    this.syncConv(c);
    this.openConv(c.convId);
    return c;
  }

  /** One older page of the open conversation (REST `before=lo`). */
  async loadOlder(c) {
    if (!c.hasOlder() || this.olderLoading.has(c.convId)) return;
    this.olderLoading.add(c.convId);
    this.render();
    const box = $('messages');
    try {
      const r = await this.api('GET', `/conversations/${c.convId}/messages?before=${c.lo}&limit=${PAGE}`);
      if (this.openId === c.convId) this.scrollIntent = { keepFrom: { height: box.scrollHeight, top: box.scrollTop } };
      c.addMessages(r.messages);
    } catch (e) {
      this.flash = `Could not load older messages: ${e.message}`;
    } finally {
      this.olderLoading.delete(c.convId);
      this.render();
    }
  }

  // ---- the WebSocket session ----

  onState(state, info) {
    this.connState = state;
    this.connInfo = info || {};
    if (state === 'unauthorized') {
      signOut(`The server refused this token: ${this.connInfo.reason || 'unauthorized'}.`);
      return;
    }
    if (state !== 'ready') this.syncing.clear(); // answers to those Syncs are lost with the connection
    this.render();
  }

  onFrame(f) {
    switch (f.kind) {
      case 'welcome': this.onWelcome(f.welcome); break;
      case 'msg': this.onMsg(f.msg); break;
      case 'ack': this.onAck(f.ack); break;
      case 'syncBatch': this.onSyncBatch(f.syncBatch); break;
      case 'receipt': this.onReceipt(f.receipt); break;
      case 'presence': this.store.setPresence(f.presence); break;
      case 'typing': this.onTyping(f.typing); break;
      case 'error': this.onError(f.error); break;
      default: break; // pong: conn.js counts it as a sign of life
    }
    this.render();
  }

  onWelcome(w) {
    const first = !this.store.me;
    this.store.welcome(w);
    if (first) this.loadPositions();
    this.syncing.clear();
    for (const c of this.store.convs.values()) {
      this.syncConv(c);
      for (const p of c.pending.values()) {
        if (!p.error) this.sendPending(c, p);
      }
    }
    if (document.visibilityState === 'hidden') this.setAway(true, true);
    else this.away = false;
    this.markRead();
    this.scheduleDelivered();
    this.refreshConvs();
    const want = Number(new URLSearchParams(location.hash.slice(1)).get('conv'));
    if (!this.openId && want && this.store.conv(want)) this.openConv(want);
  }

  /** Catch a conversation up: a conversation never loaded gets its newest
   * page; one already held is synced from the last msg_id it holds, which
   * the server continues from with no gap and no duplicate. */
  syncConv(c) {
    if (!c.loaded) c.placeTail(PAGE);
    if (c.lastMsgId > c.hi) this.requestSync(c, c.hi);
  }

  requestSync(c, after) {
    if (this.syncing.has(c.convId)) return;
    if (this.socket.send({ sync: { convId: c.convId, afterMsgId: after, limit: SYNC_LIMIT } })) {
      this.syncing.add(c.convId);
    }
  }

  onSyncBatch(b) {
    const c = this.store.conv(b.convId);
    if (!c) return;
    const added = c.addMessages(b.messages);
    this.syncing.delete(c.convId);
    if (b.more && b.messages.length) {
      this.requestSync(c, Math.max(...b.messages.map((m) => m.msgId)));
    } else if (c.needsSync() && added.length) {
      this.requestSync(c, c.hi); // live messages arrived past a hole meanwhile
    }
    this.afterNew(c, added);
  }

  onMsg(m) {
    const c = this.store.conv(m.convId);
    if (!c) {
      this.fetchConv(m.convId);
      return;
    }
    const added = c.addMessages([m]);
    c.setTyping(m.senderId, false);
    if (c.needsSync()) this.requestSync(c, c.hi); // a hole below this one
    this.afterNew(c, added);
  }

  afterNew(c, added) {
    if (!added.length) return;
    if (added.some((m) => m.senderId !== this.store.me)) this.scheduleDelivered();
    if (c.convId === this.openId) this.markRead();
  }

  onAck(a) {
    const c = this.store.conv(a.convId);
    if (c) c.ack(a);
  }

  onReceipt(r) {
    const c = this.store.conv(r.convId);
    if (!c) return;
    c.receipt(r);
    this.savePositions();
  }

  // Other members' receipt positions reach a client only as Receipt frames
  // (Welcome carries just one's own), so the ones seen are kept in this
  // browser: after a reload the ticks of older messages are still right.
  // Positions only move forward on the server, so a kept one is never ahead
  // of the truth, at worst behind it.
  positionsKey() { return `chatlog.positions.${this.store.me}`; }

  loadPositions() {
    let saved;
    try { saved = JSON.parse(localStorage.getItem(this.positionsKey()) || '{}'); } catch { saved = {}; }
    for (const [convId, users] of Object.entries(saved)) {
      const c = this.store.conv(convId);
      if (!c) continue;
      for (const [uid, [delivered, read]] of Object.entries(users)) {
        c.receipt({ userId: Number(uid), kind: 'DELIVERED', upToMsgId: delivered });
        c.receipt({ userId: Number(uid), kind: 'READ', upToMsgId: read });
      }
    }
  }

  savePositions() {
    if (!this.saveTimer) this.saveTimer = setTimeout(() => this.writePositions(), 300);
  }

  writePositions() {
    clearTimeout(this.saveTimer);
    this.saveTimer = null;
    if (!this.store.me) return;
    const out = {};
    for (const c of this.store.convs.values()) {
      if (!c.positions.size) continue;
      out[c.convId] = {};
      for (const [uid, p] of c.positions) out[c.convId][uid] = [p.delivered, p.read];
    }
    try { localStorage.setItem(this.positionsKey(), JSON.stringify(out)); } catch { /* full: ticks fall back to Receipts seen live */ }
  }

  onTyping(t) {
    const c = this.store.conv(t.convId);
    if (!c) {
      this.fetchConv(t.convId);
      return;
    }
    c.setTyping(t.userId, t.active);
  }

  onError(e) {
    if (e.clientMsgId) {
      for (const c of this.store.convs.values()) {
        const p = c.pending.get(e.clientMsgId);
        if (p && RETRY_CODES.has(e.code)) {
          this.retryLater(c, p);
          return;
        }
        if (c.fail(e.clientMsgId, e.code, e.message)) return;
      }
    }
    // Errors without a Send to pin them on (a refused Sync or Receipt, a
    // rate limit): shown, then gone at the next render after a few seconds.
    this.flash = `Server: ${e.message} (code ${e.code})`;
    setTimeout(() => { this.flash = ''; this.render(); }, 6000);
  }

  /** DELIVERED for everything held, once per burst of arrivals. */
  scheduleDelivered() {
    if (this.deliverTimer) return;
    this.deliverTimer = setTimeout(() => {
      this.deliverTimer = null;
      for (const c of this.store.convs.values()) {
        if (c.hi > c.deliveredSent &&
            this.socket.send({ receipt: { convId: c.convId, kind: 'DELIVERED', upToMsgId: c.hi } })) {
          c.deliveredSent = c.hi;
        }
      }
    }, 100);
  }

  /** READ up to what the open conversation holds, while the page is visible. */
  markRead() {
    const c = this.store.conv(this.openId);
    if (!c || document.visibilityState !== 'visible' || c.hi < 1 || c.hi <= c.lastReadMsgId) return;
    if (this.socket.send({ receipt: { convId: c.convId, kind: 'READ', upToMsgId: c.hi } })) {
      c.setMyRead(c.hi);
      if (c.deliveredSent < c.hi) c.deliveredSent = c.hi;
    }
  }

  setAway(away, force = false) {
    if (away === this.away && !force) return;
    if (this.socket.send({ presence: { state: away ? 'AWAY' : 'ONLINE' } })) this.away = away;
  }

  onVisibility() {
    const hidden = document.visibilityState === 'hidden';
    this.setAway(hidden);
    if (!hidden) this.markRead();
    this.render();
  }

  // ---- sending ----

  /** A Send refused for now (unavailable, overloaded): the same Send again
   * after a growing delay; it stays pending meanwhile. A reconnect sends it
   * too (after the Welcome), so a retry with no session just waits. */
  retryLater(c, p) {
    const wait = Math.min(SEND_RETRY_MAX_MS, SEND_RETRY_MS * 2 ** (p.retries || 0));
    p.retries = (p.retries || 0) + 1;
    clearTimeout(p.retryTimer);
    p.retryTimer = setTimeout(() => {
      if (session === this && c.pending.get(p.clientMsgId) === p && !p.error) this.sendPending(c, p);
    }, wait);
  }

  sendPending(c, p) {
    if (p.uploading) return false; // goes out when its upload is done
    return this.socket.send({ send: { convId: c.convId, body: p.body, clientMsgId: p.clientMsgId, mediaUrl: p.mediaUrl } });
  }

  sendMessage(body) {
    const c = this.store.conv(this.openId);
    if (!c) return;
    // The pending entry is shown at once and kept until its Ack; with no
    // connection it waits and goes out after the next Welcome.
    const p = c.addPending(randomId(), body);
    this.stopTyping();
    this.scrollIntent = 'bottom';
    this.renderNow(); // the echo is on screen before any answer can arrive
    this.sendPending(c, p);
  }

  /** Attach a file to the open conversation: shown at once as a pending
   * message ("Uploading…"), uploaded through POST /api/v1/media, then sent
   * as a Send with media_url = the returned URL (body: empty for an image,
   * the file's name otherwise), through the same pending → Ack path as
   * text. */
  sendFile(file) {
    const c = this.store.conv(this.openId);
    if (!c) return;
    if (file.size > MAX_MEDIA_BYTES) {
      this.flash = `${file.name} is over ${fmtSize(MAX_MEDIA_BYTES)}, the largest upload the server takes.`;
      this.render();
      return;
    }
    const image = /^image\//.test(file.type);
    const p = c.addPending(randomId(), image ? '' : file.name.slice(0, 1000));
    p.file = file;
    p.fileName = file.name;
    p.fileSize = file.size;
    p.uploading = true;
    if (image) p.preview = URL.createObjectURL(file);
    this.flash = '';
    this.scrollIntent = 'bottom';
    this.renderNow();
    this.uploadPending(c, p);
  }

  async uploadPending(c, p) {
    p.uploading = true;
    p.error = null;
    this.render();
    try {
      const r = await this.upload(p.file);
      p.mediaUrl = r.url;
      const id = mediaIdOf(r.url) || r.media_id;
      if (!this.media.has(id)) {
        this.media.set(id, { url: this.mediaHref(r.url), ctype: String(r.content_type || '').toLowerCase(), size: Number(r.size), state: 'ok', minted: false });
      }
      p.uploading = false;
      p.file = null;
      this.sendPending(c, p);
    } catch (e) {
      p.uploading = false;
      p.error = { code: 0, message: `upload failed: ${e.message}` };
    }
    this.render();
  }

  retry(c, cmid) {
    const p = c.pending.get(cmid);
    if (!p) return;
    if (p.file && !p.mediaUrl) {
      this.uploadPending(c, p);
      return;
    }
    p.error = null;
    this.sendPending(c, p);
    this.render();
  }

  /** Typing{active} while keys are pressed (renewed before the server's TTL
   * runs out), Typing{false} when the box empties, a message goes, or after
   * TYPING_IDLE_MS without a keystroke. */
  typed(text) {
    const now = Date.now();
    const t = this.typingOut;
    if (!text.trim()) {
      this.stopTyping();
      return;
    }
    if (t.convId !== this.openId || now - t.sentAt > TYPING_RENEW_MS) {
      if (t.convId && t.convId !== this.openId) this.stopTyping();
      if (this.socket.send({ typing: { convId: this.openId, active: true } })) {
        t.convId = this.openId;
        t.sentAt = now;
      }
    }
    clearTimeout(t.idle);
    t.idle = setTimeout(() => this.stopTyping(), TYPING_IDLE_MS);
  }

  stopTyping() {
    const t = this.typingOut;
    clearTimeout(t.idle);
    if (t.convId) this.socket.send({ typing: { convId: t.convId, active: false } });
    t.convId = 0;
    t.sentAt = 0;
  }

  anyTyping() {
    for (const c of this.store.convs.values()) if (c.typing.size) return true;
    return false;
  }

  // ---- navigation ----

  openConv(id) {
    const c = this.store.conv(id);
    if (!c) return;
    if (this.openId !== id) this.stopTyping();
    this.openId = id;
    this.flash = '';
    history.replaceState(null, '', `#conv=${id}`);
    this.scrollIntent = 'bottom';
    this.syncConv(c);
    this.markRead();
    this.render();
    $('composer-input').value = '';
    $('composer-input').focus();
    if (c.messages.size < 20) this.loadOlder(c);
  }

  closeConv() {
    this.stopTyping();
    this.openId = 0;
    history.replaceState(null, '', location.pathname);
    this.render();
  }

  // ---- rendering ----

  render() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    // A timer rather than requestAnimationFrame: a hidden tab still gets its
    // state applied (and READ is only sent from visible ones anyway).
    setTimeout(() => this.renderNow(), 0);
  }

  renderNow() {
    this.renderQueued = false;
    if (session !== this) return;
    renderStatus(this);
    renderConvList(this);
    renderPane(this);
  }
}

// ---- views ----

function userName(s, uid) {
  return uid === s.store.me ? 'You' : `User ${uid}`;
}

function convTitle(s, c) {
  if (c.kind === 'direct') return c.peer() ? `User ${c.peer()}` : 'Direct conversation';
  if (c.title) return c.title;
  const names = c.others().slice(0, 4).map((u) => `User ${u}`).join(', ');
  return names || 'Group';
}

function presenceOf(s, uid) {
  return s.store.presence.get(uid) || null;
}

function renderStatus(s) {
  $('me-name').textContent = s.store.me ? `User ${s.store.me}` : 'Signing in…';
  const st = $('conn-status');
  st.dataset.state = s.connState;
  // In a cluster the line names the node in use (or tried next).
  const node = s.nodes.length > 1 ? new URL(s.base).host : '';
  st.dataset.node = s.base;
  let text;
  switch (s.connState) {
    case 'ready': text = node ? `connected to ${node}` : 'connected'; break;
    case 'connecting': text = node ? `connecting to ${node}…` : 'connecting…'; break;
    case 'waiting': {
      const secs = Math.max(0, Math.ceil((s.connInfo.retryAt - Date.now()) / 1000));
      text = `reconnecting in ${secs} s`;
      break;
    }
    case 'offline': text = 'offline'; break;
    default: text = s.connState;
  }
  st.textContent = text;
  st.title = s.connInfo.reason || '';
  $('retry-now').hidden = !(s.connState === 'waiting' || s.connState === 'offline');
  // Shown over the open conversation while there is no session: what is
  // written meanwhile waits (pending) and goes out after the reconnect.
  $('conn-banner').hidden = s.connState === 'ready' || !s.store.me;
  let unread = 0;
  for (const c of s.store.convs.values()) unread += c.unread;
  document.title = unread ? `(${unread}) Chatlog` : 'Chatlog';
}

function renderConvList(s) {
  const list = $('conv-list');
  const convs = s.store.sorted();
  $('conv-empty').hidden = convs.length > 0;
  const keep = new Map([...list.children].map((li) => [li.dataset.convId, li]));
  convs.forEach((c, i) => {
    const key = String(c.convId);
    let li = keep.get(key);
    keep.delete(key);
    if (!li) {
      li = h('li', { class: 'conv', dataset: { convId: key }, role: 'button', tabindex: '0' });
      li.addEventListener('click', () => s.openConv(c.convId));
      li.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') s.openConv(c.convId); });
    }
    const peer = c.peer();
    const pres = peer ? presenceOf(s, peer) : null;
    const typing = c.typingNow();
    const last = c.newest();
    const preview = typing.length
      ? `${typing.map((u) => `User ${u}`).join(', ')} typing…`
      : last ? `${last.senderId === s.store.me ? 'You: ' : c.kind === 'group' ? `User ${last.senderId}: ` : ''}${last.body || (last.mediaUrl ? (mediaIsImage(s, last.mediaUrl) ? 'Image' : 'Attachment') : '')}` : '';
    const unread = c.convId === s.openId && document.visibilityState === 'visible' ? 0 : c.unread;
    const sig = JSON.stringify([convTitle(s, c), pres?.state, preview, !!typing.length, unread, c.kind]);
    if (li._sig !== sig) {
      li._sig = sig;
      fill(li,
        h('span', { class: `avatar ${c.kind}` }, c.kind === 'group' ? '#' : String(peer || '?').slice(-2),
          pres ? h('span', { class: 'dot', dataset: { presence: pres.state.toLowerCase() }, title: pres.state.toLowerCase() }) : null),
        h('span', { class: 'conv-text' },
          h('span', { class: 'conv-name' }, convTitle(s, c)),
          h('span', { class: `conv-preview${typing.length ? ' is-typing' : ''}` }, preview)),
        unread > 0 ? h('span', { class: 'badge', dataset: { unread: String(unread) }, title: `${unread} unread` }, String(unread)) : null,
      );
    }
    li.classList.toggle('active', c.convId === s.openId);
    li.setAttribute('aria-current', c.convId === s.openId ? 'true' : 'false');
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
  });
  for (const li of keep.values()) li.remove();
}

function convSubtitle(s, c) {
  if (c.kind === 'direct') {
    const p = presenceOf(s, c.peer());
    if (!p) return '';
    if (p.state === 'ONLINE') return 'online';
    if (p.state === 'AWAY') return 'away';
    return lastSeenText(p.lastSeenMs);
  }
  const others = c.others();
  const online = others.filter((u) => presenceOf(s, u)?.state === 'ONLINE').length;
  return `${c.members.length} members${online ? ` · ${online} online` : ''}`;
}

const TICK_TEXT = {
  [TICK.PENDING]: ['◷', 'Sending…'],
  [TICK.FAILED]: ['!', 'Not sent'],
  [TICK.SENT]: ['✓', 'Sent'],
  [TICK.DELIVERED]: ['✓✓', 'Delivered to everyone'],
  [TICK.READ]: ['✓✓', 'Read by everyone'],
};

/** Whether a media_url is known to be an image (from its HEAD). */
function mediaIsImage(s, url) {
  const info = s.media.get(mediaIdOf(url));
  return !!info && info.state === 'ok' && info.ctype.startsWith('image/');
}

/** What messageItem needs to know of a message's attachment to decide
 * whether its element must be rebuilt. */
function mediaSig(s, m) {
  if (m.uploading) return ['up', m.preview || '', m.fileName];
  const id = mediaIdOf(m.mediaUrl);
  if (!id) return m.mediaUrl ? ['link', m.mediaUrl] : null;
  const info = s.mediaInfo(id, m.mediaUrl);
  return [info.state, info.url, info.ctype, info.size];
}

/** The content of a message: its text, and its attachment when it has one.
 * An image of ours (a /media/<id> URL whose HEAD says image/*) is shown
 * inline; any other file as a download link with its name and size; an
 * upload in progress as "Uploading…" (with a local preview of an image). */
function messageContent(s, m) {
  const out = [];
  const id = mediaIdOf(m.mediaUrl);
  if (m.uploading || (m.error && m.file && !m.mediaUrl)) {
    out.push(h('div', { class: 'media media-pending' },
      m.preview ? h('img', { class: 'media-img', src: m.preview, alt: m.fileName }) : null,
      h('div', { class: 'media-status' }, m.uploading ? `Uploading ${m.fileName} (${fmtSize(m.fileSize)})…` : m.fileName)));
    return out;
  }
  const info = id ? s.mediaInfo(id, m.mediaUrl) : null;
  const image = info && info.state === 'ok' && info.ctype.startsWith('image/');
  // A file's name is its body (sendFile): shown in the link, not twice.
  if (m.body && (image || !id)) out.push(h('div', { class: 'body' }, m.body));
  if (!m.mediaUrl) return out;
  if (!id) {
    // Somebody else's URL: a plain link (http(s) or same-origin paths only).
    if (/^(https?:\/\/|\/)/.test(m.mediaUrl)) {
      out.push(h('a', { class: 'media media-file', href: m.mediaUrl, target: '_blank', rel: 'noopener noreferrer' }, 'Attachment'));
    }
    return out;
  }
  if (info.state === 'loading') {
    out.push(h('div', { class: 'media media-loading', dataset: { mediaId: id } }, m.body || 'Attachment', ' …'));
  } else if (info.state === 'error') {
    out.push(h('div', { class: 'media media-gone', dataset: { mediaId: id } }, `${m.body || 'Attachment'} (not available)`));
  } else if (image) {
    const img = h('img', { class: 'media-img', src: info.url, alt: m.body || 'Image', dataset: { mediaId: id } });
    img.addEventListener('error', () => s.imageFailed(id));
    img.addEventListener('load', () => {
      // The bubble grew: keep the view at the bottom if it was there.
      const box = $('messages');
      if (box.scrollHeight - box.scrollTop - box.clientHeight < img.clientHeight + 64) box.scrollTop = box.scrollHeight;
    }, { once: true });
    out.push(h('a', { class: 'media media-image', href: info.url, target: '_blank', rel: 'noopener noreferrer' }, img));
  } else {
    const name = m.body || 'Attachment';
    out.push(h('a', { class: 'media media-file', href: info.url, download: name, target: '_blank', rel: 'noopener noreferrer', dataset: { mediaId: id } },
      h('span', { class: 'file-icon', 'aria-hidden': 'true' }, (/\.([a-z0-9]{1,4})$/i.exec(name)?.[1] || 'file').toUpperCase()),
      h('span', { class: 'file-name' }, name),
      info.size >= 0 ? h('span', { class: 'file-size' }, fmtSize(info.size)) : null));
  }
  return out;
}

function messageItem(s, c, m, pending) {
  const own = m.senderId === s.store.me;
  const state = pending ? (m.error ? TICK.FAILED : TICK.PENDING) : own ? c.tick(m.msgId) : null;
  const sig = JSON.stringify([m.msgId, m.body, m.mediaUrl, m.ts, state, m.error?.message, c.kind, mediaSig(s, m)]);
  return { key: own && m.clientMsgId ? `c${m.clientMsgId}` : `m${m.msgId}`, sig, own, state, m, pending };
}

function buildMessage(s, c, it) {
  const { m, own, state } = it;
  const meta = h('div', { class: 'meta' }, h('time', { datetime: m.ts ? new Date(m.ts).toISOString() : undefined }, fmtTime(m.ts || m.createdMs)));
  if (own) {
    const [txt, title] = TICK_TEXT[state];
    meta.append(h('span', { class: 'ticks', dataset: { tick: state }, title, 'aria-label': title }, txt));
  }
  const bubble = h('div', { class: 'bubble' },
    !own && c.kind === 'group' ? h('div', { class: 'sender' }, userName(s, m.senderId)) : null,
    messageContent(s, m),
    meta);
  if (it.pending && m.error) {
    bubble.append(h('div', { class: 'failed' }, `Not sent: ${m.error.message} `,
      h('button', { type: 'button', class: 'link', onclick: () => s.retry(c, m.clientMsgId) }, 'Retry')));
  }
  return bubble;
}

function renderPane(s) {
  const c = s.store.conv(s.openId);
  document.body.classList.toggle('conv-open', !!c);
  $('pane-empty').hidden = !!c;
  $('pane-conv').hidden = !c;
  if (!c) return;
  $('conv-title').textContent = convTitle(s, c);
  const sub = $('conv-sub');
  sub.textContent = convSubtitle(s, c);
  sub.dataset.presence = c.kind === 'direct' ? (presenceOf(s, c.peer())?.state || 'unknown').toLowerCase() : '';

  const box = $('messages');
  const list = $('message-list');
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 48;

  const hist = $('history-state');
  if (s.olderLoading.has(c.convId)) hist.textContent = 'Loading older messages…';
  else if (c.hasOlder()) hist.textContent = 'Scroll up for older messages';
  else hist.textContent = c.messages.size ? 'The beginning of the conversation' : 'No messages yet. Say hello.';

  // Keyed update: existing items are reused (a pending message becomes its
  // acked self in place: both are keyed by client_msg_id), day dividers are
  // items too.
  const { held, pending } = c.timeline();
  const items = [];
  let lastDay = '';
  const pushDay = (ts) => {
    const d = dayKey(ts);
    if (d !== lastDay) {
      lastDay = d;
      items.push({ key: `d${d}`, sig: d, day: ts });
    }
  };
  for (const m of held) { pushDay(m.ts); items.push(messageItem(s, c, m, false)); }
  for (const p of pending) {
    pushDay(p.createdMs);
    items.push(messageItem(s, c, { ...p, msgId: 0, senderId: s.store.me, ts: 0 }, true));
  }
  const keep = new Map([...list.children].map((li) => [li.dataset.key, li]));
  items.forEach((it, i) => {
    let li = keep.get(it.key);
    keep.delete(it.key);
    if (!li) li = h('li', { dataset: { key: it.key } });
    if (li._sig !== it.sig) {
      li._sig = it.sig;
      if (it.day !== undefined) {
        li.className = 'day';
        fill(li, h('span', {}, dayFmt.format(new Date(it.day))));
      } else {
        li.className = `msg ${it.own ? 'own' : 'other'}`;
        if (it.m.msgId) li.dataset.msgId = String(it.m.msgId);
        else delete li.dataset.msgId;
        if (it.m.clientMsgId) li.dataset.clientMsgId = it.m.clientMsgId;
        li.dataset.sender = String(it.m.senderId);
        if (it.state) li.dataset.state = it.state;
        else delete li.dataset.state;
        fill(li, buildMessage(s, c, it));
      }
    }
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
  });
  for (const li of keep.values()) li.remove();

  const typing = c.typingNow();
  $('typing').textContent = typing.length
    ? `${typing.map((u) => `User ${u}`).join(', ')} ${typing.length > 1 ? 'are' : 'is'} typing…`
    : '';

  const err = $('composer-error');
  err.textContent = s.flash;
  err.hidden = !s.flash;

  const intent = s.scrollIntent;
  s.scrollIntent = null;
  if (intent && intent.keepFrom) {
    box.scrollTop = intent.keepFrom.top + (box.scrollHeight - intent.keepFrom.height);
  } else if (intent === 'bottom' || atBottom) {
    box.scrollTop = box.scrollHeight;
  }
  // A short conversation does not scroll, so there is no scroll-up to load
  // older pages with: fetch them until it does or the history is complete.
  if (c.hasOlder() && box.scrollHeight <= box.clientHeight + 8) s.loadOlder(c);
}

// ---- screens and wiring ----

let session = null;

function showSignIn(message) {
  $('app').hidden = true;
  $('signin').hidden = false;
  const err = $('signin-error');
  err.textContent = message || '';
  err.hidden = !message;
  $('token').focus();
}

function startSession(token) {
  session?.stop();
  session = new Session(token);
  $('signin').hidden = true;
  $('app').hidden = false;
  session.start();
  session.render();
}

function signOut(message) {
  session?.stop();
  session = null;
  localStorage.removeItem(TOKEN_KEY);
  $('conv-list').replaceChildren();
  $('message-list').replaceChildren();
  document.body.classList.remove('conv-open');
  history.replaceState(null, '', location.pathname);
  showSignIn(message);
}

/** Why a token cannot be used, or '' if it looks fine. */
function tokenProblem(token) {
  const claims = tokenClaims(token);
  if (!claims || typeof claims.sub !== 'string') return 'That does not look like a chatd token (a JWT from `chatd token`).';
  if (typeof claims.exp === 'number' && claims.exp * 1000 <= Date.now()) return 'This token has expired. Mint a new one.';
  return '';
}

function wire() {
  $('signin-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const token = $('token').value.trim();
    const problem = tokenProblem(token);
    if (problem) {
      showSignIn(problem);
      return;
    }
    localStorage.setItem(TOKEN_KEY, token);
    $('token').value = '';
    startSession(token);
  });
  $('signout').addEventListener('click', () => signOut(''));
  $('retry-now').addEventListener('click', () => session?.socket.reconnectNow());
  $('back').addEventListener('click', () => session?.closeConv());

  const form = $('new-conv-form');
  const syncKind = () => {
    const group = form.elements.kind.value === 'group';
    for (const el of form.querySelectorAll('.group-only')) el.hidden = !group;
  };
  for (const r of form.elements.kind) r.addEventListener('change', syncKind);
  syncKind();
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const err = $('new-conv-error');
    err.hidden = true;
    const kind = form.elements.kind.value;
    const raw = $('new-members').value.split(/[\s,]+/).filter(Boolean);
    const members = raw.map(Number);
    if (members.some((n) => !Number.isSafeInteger(n) || n < 1)) {
      err.textContent = 'User ids are whole numbers, separated by commas.';
      err.hidden = false;
      return;
    }
    if (kind === 'direct' && members.filter((u) => u !== session.store.me).length !== 1) {
      err.textContent = 'A direct conversation has exactly one other user.';
      err.hidden = false;
      return;
    }
    try {
      await session.createConv(kind, members, $('new-title').value.trim());
      form.reset();
      syncKind();
      $('new-conv').open = false;
    } catch (e) {
      err.textContent = e.message;
      err.hidden = false;
    }
  });

  const input = $('composer-input');
  const autosize = () => {
    input.style.height = 'auto';
    input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
  };
  $('composer').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const body = input.value.trim();
    if (!body || !session) return;
    if (utf8Length(body) > MAX_BODY_BYTES) {
      session.flash = `That message is over ${MAX_BODY_BYTES} bytes.`;
      session.render();
      return;
    }
    session.flash = '';
    input.value = '';
    autosize();
    session.sendMessage(body);
  });
  input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      $('composer').requestSubmit();
    }
  });
  input.addEventListener('input', () => {
    autosize();
    session?.typed(input.value);
  });

  // Attachments: the 📎 button opens the file picker; files can also be
  // pasted into the message box or dropped on the conversation.
  $('attach').addEventListener('click', () => $('attach-input').click());
  $('attach-input').addEventListener('change', (ev) => {
    for (const f of ev.target.files) session?.sendFile(f);
    ev.target.value = ''; // picking the same file again fires 'change' again
  });
  input.addEventListener('paste', (ev) => {
    const files = [...(ev.clipboardData?.files || [])];
    if (!files.length || !session) return;
    ev.preventDefault();
    for (const f of files) session.sendFile(f);
  });
  const pane = $('pane-conv');
  pane.addEventListener('dragover', (ev) => {
    if (ev.dataTransfer?.types?.includes('Files')) ev.preventDefault();
  });
  pane.addEventListener('drop', (ev) => {
    const files = [...(ev.dataTransfer?.files || [])];
    if (!files.length || !session) return;
    ev.preventDefault();
    for (const f of files) session.sendFile(f);
  });

  $('messages').addEventListener('scroll', () => {
    const c = session?.store.conv(session.openId);
    if (c && $('messages').scrollTop < 120) session.loadOlder(c);
  });
  document.addEventListener('visibilitychange', () => session?.onVisibility());
  window.addEventListener('pagehide', () => session?.writePositions());
  window.addEventListener('hashchange', () => {
    const id = Number(new URLSearchParams(location.hash.slice(1)).get('conv'));
    if (session && id && id !== session.openId) session.openConv(id);
  });
}

async function boot() {
  wire();
  const nodesLoaded = loadNodes();
  try {
    types = await loadTypes();
    nodes = await nodesLoaded;
  } catch (e) {
    showSignIn(`Could not load the protocol schema (chat.proto): ${e.message}`);
    $('signin-button').disabled = true;
    return;
  }
  const token = localStorage.getItem(TOKEN_KEY);
  const problem = token ? tokenProblem(token) : '';
  if (token && !problem) startSession(token);
  else {
    if (token) localStorage.removeItem(TOKEN_KEY);
    showSignIn(problem);
  }
}

boot();
