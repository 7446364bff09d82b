// store.js — what the web client knows, with no DOM and no network: the
// conversations, the messages held of each, the sender's pending messages,
// other members' receipt positions, typing and presence. app.js feeds it
// frames and REST answers and renders from it; tests/web/store.test.mjs runs
// it under Node.
//
// The rules that keep a conversation free of duplicates and gaps:
//
// - Messages are kept by msg_id (a Map), so a message seen twice (Sync and a
//   live Msg meeting, a retried Send, a page loaded twice) is held once.
// - msg_ids are dense per conversation (1, 2, 3, ...), so "no gap" is
//   checkable: the conversation holds the window [lo, hi] completely, and a
//   message above hi + 1 means something in between is missing. The caller
//   then Syncs from hi (needsSync() says when). Older pages extend lo
//   downwards through REST (`before=lo`); lo == 1 means the history is
//   complete.
// - A message of one's own that is still pending is keyed by its
//   client_msg_id until its Ack (or the stored message itself, e.g. through a
//   Sync after a reconnect) arrives; then the pending entry is replaced by the
//   message, in place in the timeline's order.
//
// Ids are JavaScript numbers: the server hands out ids below 2^53 (see
// proto/chat.proto), and app.js decodes uint64 fields with longs: Number.

/** A message from a Msg, SyncBatch, Ack or REST answer, in one shape. */
export function normMessage(m) {
  return {
    convId: Number(m.convId ?? m.conv_id),
    msgId: Number(m.msgId ?? m.msg_id),
    senderId: Number(m.senderId ?? m.sender_id),
    body: m.body ?? '',
    mediaUrl: m.mediaUrl ?? m.media_url ?? '',
    ts: Number(m.ts ?? 0),
    clientMsgId: m.clientMsgId ?? m.client_msg_id ?? '',
  };
}

/** Tick states of one's own messages, in order. */
export const TICK = Object.freeze({ PENDING: 'pending', FAILED: 'failed', SENT: 'sent', DELIVERED: 'delivered', READ: 'read' });

export class Conversation {
  constructor(convId, me) {
    this.convId = convId;
    this.me = me;
    this.kind = 'direct';
    this.title = '';
    this.members = [];
    this.creator = 0;
    this.createdAt = 0;
    this.lastMsgId = 0; // the newest msg_id known to exist
    this.lastReadMsgId = 0; // my READ position
    this.unread = 0;
    this.messages = new Map(); // msg_id -> message
    this.lo = 1; // [lo, hi] is held completely; empty while hi < lo
    this.hi = 0;
    this.loaded = false; // a window has been placed (tail synced at least once)
    this.pending = new Map(); // client_msg_id -> { clientMsgId, body, mediaUrl, createdMs, error }
    this.positions = new Map(); // user id -> { delivered, read } (others' receipts)
    this.typing = new Map(); // user id -> expiry (ms since epoch, local clock)
    this.deliveredSent = 0; // my DELIVERED position as far as this client told the server
  }

  /** Apply a Welcome ConvState or a REST conversation object. */
  applyState(s) {
    if (s.kind) this.kind = s.kind;
    if (s.title !== undefined) this.title = s.title;
    if (Array.isArray(s.members)) this.members = s.members.map(Number);
    if (s.creator !== undefined) this.creator = Number(s.creator);
    const created = s.createdAt ?? s.created_at;
    if (created !== undefined) this.createdAt = Number(created);
    // The server's unread count is taken when the state is at least as new
    // as what this client knows (not older than a Msg or READ it has seen
    // since the request went out, e.g. a REST answer overtaken by frames).
    const last = Number(s.lastMsgId ?? s.last_msg_id ?? 0);
    const read = Number(s.lastReadMsgId ?? s.last_read_msg_id ?? 0);
    const fresh = last >= this.lastMsgId && read >= this.lastReadMsgId;
    if (last > this.lastMsgId) this.lastMsgId = last;
    if (read > this.lastReadMsgId) this.lastReadMsgId = read;
    if (fresh && s.unread !== undefined) this.unread = Number(s.unread);
    if (this.lastReadMsgId > this.deliveredSent) this.deliveredSent = this.lastReadMsgId; // READ implies DELIVERED
  }

  /** The other members (everyone but me). */
  others() {
    return this.members.filter((u) => u !== this.me);
  }

  /** The other member of a direct conversation (0 if none). */
  peer() {
    return this.kind === 'direct' ? (this.others()[0] ?? 0) : 0;
  }

  /** Where a tail Sync of a conversation never loaded starts: the newest
   * `page` messages. Places the (empty) window just below them. */
  placeTail(page) {
    if (this.loaded) return this.hi;
    const after = Math.max(0, this.lastMsgId - page);
    this.lo = after + 1;
    this.hi = after;
    this.loaded = true;
    return after;
  }

  /** Add messages (any order, duplicates welcome). Returns the ones that were
   * new. Counts new messages from others past what was known as unread. */
  addMessages(list) {
    const added = [];
    const knownLast = this.lastMsgId;
    for (const raw of list) {
      const m = normMessage(raw);
      if (!(m.msgId >= 1) || this.messages.has(m.msgId)) continue;
      this.messages.set(m.msgId, m);
      added.push(m);
      if (m.senderId === this.me && m.clientMsgId) this.pending.delete(m.clientMsgId);
      if (m.msgId > this.lastMsgId) this.lastMsgId = m.msgId;
      if (m.senderId !== this.me && m.msgId > knownLast && m.msgId > this.lastReadMsgId) this.unread++;
    }
    if (!this.loaded && added.length) {
      // The first messages of a conversation never synced (e.g. history
      // loaded through REST first): the window starts at the lowest.
      const min = Math.min(...added.map((m) => m.msgId));
      this.lo = min;
      this.hi = min - 1;
      this.loaded = true;
    }
    while (this.messages.has(this.hi + 1)) this.hi++;
    while (this.lo > 1 && this.messages.has(this.lo - 1)) this.lo--;
    return added;
  }

  /** True when messages past the window are known to exist but are not all
   * held: a Sync from hi is due. */
  needsSync() {
    return this.loaded && this.lastMsgId > this.hi;
  }

  /** True when older messages exist that are not held. */
  hasOlder() {
    return this.loaded && this.lo > 1;
  }

  /** A Send about to go out. */
  addPending(clientMsgId, body, mediaUrl = '', now = Date.now()) {
    const p = { clientMsgId, body, mediaUrl, createdMs: now, error: null };
    this.pending.set(clientMsgId, p);
    return p;
  }

  /** The Ack of one of my Sends: the pending entry becomes the message. */
  ack(a) {
    const cmid = a.clientMsgId ?? a.client_msg_id;
    const p = this.pending.get(cmid);
    if (!p) return null; // already replaced (e.g. by a Sync) or not ours
    const m = {
      convId: this.convId, msgId: Number(a.msgId ?? a.msg_id), senderId: this.me,
      body: p.body, mediaUrl: p.mediaUrl, ts: Number(a.ts), clientMsgId: cmid,
    };
    this.pending.delete(cmid);
    this.addMessages([m]);
    return m;
  }

  /** An Error answering one of my Sends. */
  fail(clientMsgId, code, message) {
    const p = this.pending.get(clientMsgId);
    if (p) p.error = { code, message };
    return p;
  }

  /** A forwarded Receipt {user_id, kind, up_to_msg_id}. Positions only move
   * forward; READ implies DELIVERED. My own (from any of my devices) moves
   * my READ position and the unread count. */
  receipt(r) {
    const uid = Number(r.userId ?? r.user_id);
    const upTo = Number(r.upToMsgId ?? r.up_to_msg_id);
    const read = r.kind === 'READ' || r.kind === 2;
    if (uid === this.me) {
      if (upTo > this.deliveredSent) this.deliveredSent = upTo;
      if (read) this.setMyRead(upTo);
      return;
    }
    const p = this.positions.get(uid) || { delivered: 0, read: 0 };
    if (read && upTo > p.read) p.read = upTo;
    if (upTo > p.delivered) p.delivered = upTo;
    this.positions.set(uid, p);
  }

  /** Move my READ position to upTo (forward only) and recount unread. */
  setMyRead(upTo) {
    if (upTo <= this.lastReadMsgId) return false;
    this.lastReadMsgId = upTo;
    if (upTo > this.deliveredSent) this.deliveredSent = upTo;
    if (upTo >= this.lastMsgId) {
      this.unread = 0;
    } else if (this.loaded && this.lo <= upTo + 1 && this.hi >= this.lastMsgId) {
      let n = 0;
      for (const m of this.messages.values()) if (m.msgId > upTo && m.senderId !== this.me) n++;
      this.unread = n;
    } else {
      this.unread = Math.min(this.unread, this.lastMsgId - upTo);
    }
    return true;
  }

  /** The tick of one of my messages: READ when every other member has read
   * it, DELIVERED when every other member's device has it, else SENT. */
  tick(msgId) {
    const others = this.others();
    if (others.length === 0) return TICK.SENT;
    let delivered = true;
    let read = true;
    for (const u of others) {
      const p = this.positions.get(u);
      if (!p || p.read < msgId) read = false;
      if (!p || p.delivered < msgId) delivered = false;
    }
    return read ? TICK.READ : delivered ? TICK.DELIVERED : TICK.SENT;
  }

  /** What to show, oldest first: held messages by msg_id, then pending ones
   * by when they were written. */
  timeline() {
    const held = [...this.messages.values()].sort((a, b) => a.msgId - b.msgId);
    const pend = [...this.pending.values()].sort((a, b) => a.createdMs - b.createdMs);
    return { held, pending: pend };
  }

  /** The newest held message (for the list's preview), or null. */
  newest() {
    let best = null;
    for (const m of this.messages.values()) if (!best || m.msgId > best.msgId) best = m;
    return best;
  }

  /** Set or clear a member's typing; `ttlMs` bounds it locally in case the
   * server's "stopped" never arrives (the server's own lifetime is
   * typing_ttl_ms, 6 s by default). */
  setTyping(uid, active, now = Date.now(), ttlMs = 8000) {
    if (uid === this.me) return;
    if (active) this.typing.set(uid, now + ttlMs);
    else this.typing.delete(uid);
  }

  /** Members typing now (expired entries dropped). */
  typingNow(now = Date.now()) {
    const out = [];
    for (const [u, exp] of this.typing) {
      if (exp <= now) this.typing.delete(u);
      else out.push(u);
    }
    return out.sort((a, b) => a - b);
  }
}

export class Store {
  constructor() {
    this.me = 0;
    this.convs = new Map(); // conv_id -> Conversation
    this.presence = new Map(); // user id -> { state: 'ONLINE'|'AWAY'|'OFFLINE', lastSeenMs }
  }

  /** The conversation, created (empty) when `create`. */
  conv(convId, create = false) {
    const id = Number(convId);
    let c = this.convs.get(id);
    if (!c && create) {
      c = new Conversation(id, this.me);
      this.convs.set(id, c);
    }
    return c || null;
  }

  /** A Welcome: who I am and every conversation's state. Presence is reset:
   * the server sends Presence for the contacts online now right after, so
   * everyone it does not mention is offline. */
  welcome(w) {
    const uid = Number(w.userId);
    if (this.me && this.me !== uid) {
      this.convs.clear();
      this.presence.clear();
    }
    this.me = uid;
    for (const s of w.conversations || []) {
      const c = this.conv(s.convId, true);
      c.me = uid;
      c.applyState(s);
    }
    for (const c of this.convs.values()) {
      for (const u of c.others()) {
        const p = this.presence.get(u);
        this.presence.set(u, { state: 'OFFLINE', lastSeenMs: p ? p.lastSeenMs : 0 });
      }
    }
  }

  setPresence(p) {
    const uid = Number(p.userId);
    if (uid === this.me) return;
    const prev = this.presence.get(uid);
    this.presence.set(uid, {
      state: p.state,
      lastSeenMs: Number(p.lastSeenMs) || (prev ? prev.lastSeenMs : 0),
    });
  }

  /** Conversations, the most recently active first. */
  sorted() {
    const key = (c) => {
      const n = c.newest();
      return Math.max(n ? n.ts : 0, c.createdAt, c.pending.size ? Date.now() : 0);
    };
    return [...this.convs.values()].sort((a, b) => key(b) - key(a) || b.lastMsgId - a.lastMsgId || a.convId - b.convId);
  }
}
