// conn.js — one chat.v1 session that comes back by itself: a WebSocket to
// chatd (subprotocol chat.v1, binary protobuf frames encoded and decoded by
// protobufjs from proto/chat.proto), Hello with the token, and after any drop
// a new connection with exponential backoff. What to do after each Welcome
// (Sync every conversation from its last msg_id, re-send pending messages)
// is the caller's: onFrame sees every ServerFrame, the Welcome included.
//
// Several nodes (a chatd cluster): given a list of URLs, the socket starts at
// the first and moves to the next one after every drop or failed attempt,
// round and round. The backoff counts rounds through the list, not
// attempts, so a client whose node died tries every other node at once
// before it waits longer. `url`/`at` say which node is in use.
//
// States, reported through onState(state, info):
//   connecting    WebSocket opening or Hello sent, no Welcome yet
//   ready         Welcome received; send() works
//   waiting       dropped; the next attempt is at info.retryAt
//   offline       the browser says it is offline; waits for its 'online'
//   unauthorized  the server refused the token (Error 7 / close 4001): stays
//                 down until a new token is given
//   stopped       stop() was called
//
// A dead connection (no frame of any kind for PING_AFTER_MS, then no Pong
// for PONG_WITHIN_MS) is dropped by this side: a browser may otherwise sit on
// a half-open TCP connection for minutes.

export const BACKOFF_FIRST_MS = 500;
export const BACKOFF_MAX_MS = 30000;
const WELCOME_WITHIN_MS = 15000;
const PING_AFTER_MS = 25000;
const PONG_WITHIN_MS = 10000;
const TICK_MS = 2500;

/** The delay before attempt number `attempt` (0-based): exponential, capped,
 * with jitter in the upper half so that many clients dropped at once by a
 * restarting server do not come back in step. */
export function backoffDelay(attempt, rnd = Math.random) {
  const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** Math.min(attempt, 16));
  return Math.round(cap / 2 + (rnd() * cap) / 2);
}

/** The WebSocket URL of the server that served this page: same host and
 * port, ws:// under http:// and wss:// under https://. */
export function wsUrlFor(loc) {
  return `${loc.protocol === 'https:' ? 'wss:' : 'ws:'}//${loc.host}/ws`;
}

/** The origin of a base URL ("http://127.0.0.1:8082/" → "http://127.0.0.1:8082"),
 * or '' when it is not an http(s) URL. */
export function originOf(base) {
  try {
    const u = new URL(base);
    return u.protocol === 'http:' || u.protocol === 'https:' ? u.origin : '';
  } catch {
    return '';
  }
}

/** The nodes a client uses, from /api/v1/cluster's client_urls: origins,
 * its own first, then the ones after it in the list, wrapping around (so the
 * clients of a dead node spread over the others rather than all picking the
 * first), without duplicates. Just [own] when the list is empty. */
export function nodeOrder(own, clientUrls = []) {
  const list = [];
  for (const u of clientUrls) {
    const o = originOf(u);
    if (o && !list.includes(o)) list.push(o);
  }
  const i = list.indexOf(own);
  if (i < 0) return [own, ...list];
  return [...list.slice(i), ...list.slice(0, i)];
}

/** The WebSocket URL of a node's origin. */
export function wsUrlOf(origin) {
  return origin.replace(/^http/, 'ws') + '/ws';
}

export class ChatSocket {
  /**
   * @param {object} o
   * @param {string} o.url        ws:// or wss:// URL of /ws
   * @param {string[]} [o.urls]   several such URLs (a cluster's nodes): used
   *                              in turn, the next after each failure
   * @param {string} o.token      the JWT for Hello
   * @param {string} o.deviceId   free text naming this device
   * @param {object} o.types      { ClientFrame, ServerFrame } protobufjs types
   * @param {function} o.onFrame  (frame) for every decoded ServerFrame
   * @param {function} o.onState  (state, info)
   */
  constructor({ url, urls, token, deviceId, types, onFrame, onState, win = globalThis }) {
    this.urls = urls && urls.length ? [...urls] : [url];
    this.at = 0; // index in urls of the node in use (or tried next)
    this.token = token;
    this.deviceId = deviceId;
    this.types = types;
    this.onFrame = onFrame;
    this.onState = onState;
    this.win = win;
    this.ws = null;
    this.state = 'stopped';
    this.attempt = 0;
    this.retryTimer = null;
    this.lastRx = 0;
    this.pingSentAt = 0;
    this.nonce = 1;
    this.tickTimer = null;
    this.openedAt = 0;
    this.onOnline = () => { if (this.state === 'offline' || this.state === 'waiting') this.reconnectNow(); };
    this.onOffline = () => { if (this.state !== 'stopped' && this.state !== 'unauthorized') this.drop('the browser went offline', 'offline'); };
  }

  /** The URL of the node in use, or the one the next attempt goes to. */
  get url() { return this.urls[this.at]; }

  /** Use this list of nodes from now on (the current one stays in use when
   * it is in it). */
  setUrls(urls) {
    if (!urls || !urls.length) return;
    const cur = this.url;
    this.urls = [...urls];
    this.at = Math.max(0, this.urls.indexOf(cur));
  }

  start() {
    this.win.addEventListener?.('online', this.onOnline);
    this.win.addEventListener?.('offline', this.onOffline);
    this.tickTimer = setInterval(() => this.tick(), TICK_MS);
    this.connect();
  }

  stop() {
    this.win.removeEventListener?.('online', this.onOnline);
    this.win.removeEventListener?.('offline', this.onOffline);
    clearInterval(this.tickTimer);
    clearTimeout(this.retryTimer);
    this.detach(1000, 'signed out');
    this.setState('stopped', {});
  }

  /** Skip the rest of the backoff wait. */
  reconnectNow() {
    if (this.state === 'stopped' || this.state === 'unauthorized') return;
    clearTimeout(this.retryTimer);
    this.detach(1000, 'reconnecting');
    this.connect();
  }

  /** Encode and send a ClientFrame (a plain object such as
   * { send: {...} }); false when there is no ready session. */
  send(obj) {
    if (this.state !== 'ready' || !this.ws || this.ws.readyState !== 1) return false;
    const { ClientFrame } = this.types;
    const msg = ClientFrame.fromObject(obj);
    const err = ClientFrame.verify(msg);
    if (err) throw new Error(`bad ClientFrame: ${err}`);
    this.ws.send(ClientFrame.encode(msg).finish());
    return true;
  }

  setState(state, info) {
    this.state = state;
    this.onState?.(state, info);
  }

  connect() {
    if (this.win.navigator && this.win.navigator.onLine === false) {
      this.setState('offline', { reason: 'the browser is offline' });
      return;
    }
    let ws;
    try {
      ws = new WebSocket(this.url, 'chat.v1');
    } catch (e) {
      this.drop(`cannot open ${this.url}: ${e.message}`);
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.openedAt = Date.now();
    this.lastRx = 0;
    this.pingSentAt = 0;
    this.setState('connecting', { attempt: this.attempt, url: this.url });
    ws.onopen = () => {
      ws.onopen = null;
      const { ClientFrame } = this.types;
      ws.send(ClientFrame.encode(ClientFrame.fromObject({ hello: { token: this.token, deviceId: this.deviceId } })).finish());
    };
    ws.onmessage = (ev) => this.receive(ev.data);
    ws.onerror = () => { /* the close event that follows says what happened */ };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      if (ev.code === 4001) {
        this.detach();
        this.setState('unauthorized', { reason: ev.reason || 'the server refused the token' });
        return;
      }
      this.drop(`connection closed (${ev.code}${ev.reason ? ' ' + ev.reason : ''})`);
    };
  }

  receive(data) {
    const { ServerFrame } = this.types;
    let f;
    try {
      f = ServerFrame.toObject(ServerFrame.decode(new Uint8Array(data)), {
        longs: Number, enums: String, defaults: true, oneofs: true,
      });
    } catch (e) {
      this.drop(`undecodable frame from the server: ${e.message}`);
      return;
    }
    this.lastRx = Date.now();
    this.pingSentAt = 0;
    if (f.kind === 'welcome') {
      this.attempt = 0;
      this.setState('ready', { userId: f.welcome.userId, url: this.url });
    } else if (f.kind === 'error' && f.error.code === 7) {
      this.detach();
      this.setState('unauthorized', { reason: f.error.message });
      return;
    }
    this.onFrame?.(f);
  }

  /** Forget the current WebSocket (closing it politely if it is open). */
  detach(code = 1000, reason = '') {
    const ws = this.ws;
    this.ws = null;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try {
      if (ws.readyState === 0 || ws.readyState === 1) ws.close(code, reason);
    } catch { /* already closing */ }
  }

  /** The session is gone: schedule the next attempt (or wait for 'online'). */
  drop(reason, next = 'waiting') {
    if (this.state === 'stopped' || this.state === 'unauthorized') return;
    this.detach(1000, 'going away');
    clearTimeout(this.retryTimer);
    if (next === 'offline') {
      this.setState('offline', { reason });
      return;
    }
    // The next attempt goes to the next node; the wait grows per round
    // through the list.
    this.at = (this.at + 1) % this.urls.length;
    const delay = backoffDelay(Math.floor(this.attempt++ / this.urls.length));
    const retryAt = Date.now() + delay;
    this.setState('waiting', { reason, retryAt, attempt: this.attempt, url: this.url });
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  /** Liveness: Hello answered in time, a quiet connection pinged, a ping
   * answered in time. */
  tick() {
    const now = Date.now();
    if (this.state === 'connecting' && this.ws && now - this.openedAt > WELCOME_WITHIN_MS) {
      this.drop('no Welcome from the server');
    } else if (this.state === 'ready' && this.ws) {
      if (this.pingSentAt && now - this.pingSentAt > PONG_WITHIN_MS) {
        this.drop('the server stopped answering');
      } else if (!this.pingSentAt && now - this.lastRx > PING_AFTER_MS) {
        this.pingSentAt = now;
        this.send({ ping: { nonce: this.nonce++ } });
      }
    }
  }
}
