/**
 * plainsocket browser client: Socket.IO's programming model over one native WebSocket.
 *
 * Wire protocol: docs/protocol.md, version 1. Every text frame is one JSON envelope
 * `{"event", "namespace", "data", "id"}`; there is nothing else on the wire.
 *
 *     import { connect } from '/client.js';
 *     const socket = connect(`ws://${location.host}/`);        // namespace "/"
 *     const test = socket.of('/test', { auth: { token } });     // same WebSocket
 * `connect(url, { auth })`: auth for `/` goes with the first connect (`connect=client`, see
 * docs/protocol.md), as an object or a function called on each attempt (a fresh token).
 *     test.on('my response', (data) => console.log(data));
 *     await test.ready;                                         // rejects on connect_error
 *     const pong = await test.emitWithAck('my ping', null, { timeout: 5000 });
 *
 * Layout: a `Manager` owns the WebSocket, reconnection, the heartbeat and the ack ids; each
 * `Namespace` is a small event emitter that sends through it. `connect()` returns the `/`
 * namespace; `of()` adds more. Errors are `SocketError`s with a machine-readable `code`.
 * `connect()` throws a `TypeError` for a missing or scheme-less URL (`http(s)://` is taken
 * as `ws(s)://`).
 *
 * Sending, socket.io style as well:
 *   emit(event, data)                   fire and forget (buffered while not connected)
 *   emit(event, data, (answer) => ...)  the callback gets the server's answer; a failure
 *                                       (refused, lost session) goes to the `error` event
 *   timeout(ms).emit(event, data, (err, answer) => ...)   err: SocketError, `ack_timeout`...
 *   emitWithAck(event, data, {timeout}) / timeout(ms).emitWithAck(event, data): a promise
 *   volatile.emit(event, data)          sent only if connected now, else dropped silently
 * `emit` takes one data value (the envelope has one `data`): more arguments are a TypeError.
 * With `connect(url, {retries: n})` (socket.io-client's option) every emit asks for an ack,
 * and one that got none within `ackTimeout` checks the link and waits again, n times: a frame
 * sent over a link that died silently is sent again with its id after the resume, and the
 * server handles it once. (A new session instead fails it: `disconnected`.)
 *
 * State: `connected`, `disconnected`, `active` (connected, or will (re)connect by itself),
 * `id` (the sid while connected, else undefined), `sid` (the last one), `recovered`, and
 * `ready`: a promise that resolves on `connect` and rejects when this namespace will not
 * connect any more (a refusal, `disconnect()`, or the client giving up). A failed attempt that
 * will be retried does not settle it.
 *
 * Events a namespace emits locally, besides the server's own:
 *   connect ({sid, recovered})
 *   connect_error (SocketError): on every failed attempt, for every namespace that wants to
 *     be connected, with a `code` and a `message` an application can show:
 *       connect_failed         the WebSocket closed before the server's greeting: the server
 *                              is down or unreachable, or refused this page's Origin (browsers
 *                              see a 403 as a plain failed connection, code 1006); retried.
 *                              From a page of another origin the message names that origin
 *       connect_timeout        no greeting within `heartbeatTimeout`; retried
 *       server_full            close code 4002 (too many connections); retried after
 *                              `reconnectDelayLong`
 *       unsupported_protocol   the server speaks another protocol (we close with 4010); final
 *       connect_refused        the server's `connect_error` frame (auth refused, unknown
 *                              namespace), `data` is its payload; final for this namespace
 *     `error.closeCode` is the WebSocket close code, when there was one.
 *   disconnect (reason, {code})  reason: `io client disconnect`, `io server disconnect`,
 *                              `transport close`, `ping timeout`, `offline` (the browser's
 *                              `offline` event: the link is dropped without a close frame, so
 *                              the session can be resumed; `online` reconnects at once)
 *   error (SocketError)        the server refused one of our frames; `message_too_big` when
 *                              it closed the link with 1009 for a frame over its size limit
 *                              (`data: {event, bytes}`; a call's own promise gets it instead):
 *                              that frame is not delivered nor sent again, the session is
 *                              resumed, and frames as large are refused locally from then on
 *   warning (SocketError)      an emit was dropped (buffer full, closed, left, or as large as
 *                              one the server refused: `message_too_big`)
 *   reconnect_attempt (n)      reconnect (attempts it took, {recovered})
 *   reconnect_failed (attempts)
 * `reconnect` follows socket.io's Manager: it also comes when the very first connection only
 * succeeded after failed attempts (then `connect` says `recovered: false` without any
 * state having been lost).
 *
 * Emits made while a namespace is not connected are buffered (bounded) and sent in order
 * when it is. `disconnect()` leaves one namespace; when no namespace is left the WebSocket is
 * closed (as `close()` does); `connect()` joins again, and reconnects at once if a backoff was
 * pending.
 *
 * Connection state recovery (docs/protocol.md, "Extension: connection state recovery") is
 * automatic when the server offers it: after a link is lost, the next WebSocket asks to resume
 * the session with the server's token and the offset of the last frame received. If it is
 * resumed, the sid, namespaces and rooms are kept, the frames missed meanwhile are dispatched
 * like any other, calls still waiting for their `ack` are sent once more (with their ids: the
 * server drops those it already handled) and stay pending across the outage, and `connect`
 * says `recovered: true`. If not, this is a new session: calls sent before the drop fail with
 * `disconnected` and `connect` says `recovered: false`, which tells the application to
 * resynchronise (`socket.recovered` says the same). Without recovery, delivery is at most once:
 * frames written to a socket that then dies are lost (never resent). After close code 1009
 * the session is resumed like after any drop, except for the frame that was too big.
 */

/** The protocol version this client speaks (docs/protocol.md, "Connecting"). */
export const PROTOCOL = 1;

/** Event names an application can not emit (docs/protocol.md, "The envelope"). */
const RESERVED_EVENTS = new Set(['connect', 'connect_error', 'disconnect', 'error', 'ack', 'heartbeat']);

/**
 * What to do after the server closes the socket with a given code (docs/protocol.md,
 * "Close codes"). Codes not listed here (1001, 1009, 1011, and 1005/1006 when the link just
 * drops) mean "reconnect with backoff".
 */
const CLOSE_ACTIONS = new Map([
  [1000, 'stop'], // normal closure: someone asked for it
  [1002, 'stop'], // protocol error: this client is broken, retrying sends the same bytes
  [1007, 'stop'], // invalid UTF-8: same
  [1008, 'long'], // rate limited for too long
  [4000, 'now'], // slow consumer: the link is fine, the backlog is gone
  [1012, 'soon'], // service restart: the node hands the session to another one, resume there within 1 s
  [4001, 'stop'], // the application kicked us
  [4002, 'long'], // too many connections
  [4010, 'stop'], // unsupported protocol (we send it; a server that echoes it will not change)
]);
// A refused handshake (HTTP 403 for a disallowed Origin) should mean "give up", but browsers
// report it as a plain 1006, the same as an unreachable server: both back off.

/** Failures of an emit that are the client's to report (`warning`), not the server's (`error`). */
const LOCAL_FAILURES = new Set(['ack_timeout', 'disconnected', 'closed', 'buffer_overflow', 'reconnect_failed']);

/** Milliseconds over which the clients of a restarting node (1012) reconnect. */
const RESTART_SPREAD_MS = 1000;

/** Close code a client sends when it does not speak the server's protocol version. */
const CLOSE_UNSUPPORTED_PROTOCOL = 4010;

/**
 * Options of `connect()`. Times are in milliseconds; `null` disables a timeout.
 */
const DEFAULTS = Object.freeze({
  /** Payload of the `connect` frame for `/` (sent only if the server refuses `/` without it). */
  auth: null,
  // Reconnection
  /** Reconnect after the link is lost (false: stay closed). */
  reconnect: true,
  /** Give up after this many failed attempts in a row. */
  reconnectAttempts: Infinity,
  /** First delay; doubles on each failed attempt... */
  reconnectDelay: 1000,
  /** ...up to this cap. */
  reconnectDelayMax: 5000,
  /** Minimum delay after close codes that ask for a long backoff (1008, 4002): the jitter
   * only adds to it, up to `reconnectDelayLong * (1 + randomizationFactor)`. */
  reconnectDelayLong: 30000,
  /** Jitter: each ordinary delay is scaled by a random factor in [1 - f, 1 + f], so clients
   * spread out. */
  randomizationFactor: 0.5,
  // Timeouts
  /** Send `{"event":"heartbeat"}` this often: browsers hide WebSocket pings from scripts. */
  heartbeatInterval: 10000,
  /** The link is dead if no frame at all arrives this long after a heartbeat (or after opening). */
  heartbeatTimeout: 20000,
  /** Default `timeout` of `emitWithAck`. */
  ackTimeout: 10000,
  /** socket.io-client's `retries`: each emit (plain ones too) asks for an ack; a timeout
   * without one checks the link and waits again, this many times, so that a frame sent over a
   * link that died silently is sent again after the resume, and arrives once. 0: off. */
  retries: 0,
  // Limits
  /** Emits kept per namespace while it is not connected; the oldest is dropped beyond this. */
  bufferSize: 100,
});

/** The one error type of this module; `code` says what happened. */
export class SocketError extends Error {
  /**
   * @param {string} code machine-readable: a server error code (`unknown_event`, ...) or one
   *   of `ack_timeout`, `disconnected`, `buffer_overflow`, `closed`, `connect_refused`,
   *   `connect_failed`, `connect_timeout`, `server_full`, `rate_limited`,
   *   `unsupported_protocol`, `reserved_event`, `reconnect_failed`, `message_too_big`
   * @param {string} message for people
   * @param {*} [data] the server's payload, when there was one
   */
  constructor(code, message, data = null) {
    super(message);
    this.name = 'SocketError';
    this.code = code;
    this.data = data;
  }
}

/**
 * Open a connection and return its `/` namespace.
 *
 * @param {string} url `ws://` or `wss://` URL of the server
 * @param {object} [options] see `DEFAULTS` above
 * @returns {Namespace}
 */
export function connect(url, options = {}) {
  url = websocketUrl(url);
  const manager = new Manager(url, { ...DEFAULTS, ...options });
  const root = manager.namespace('/', options.auth ?? null);
  manager.open();
  return root;
}

/**
 * Check the URL given to `connect()`: a missing or scheme-less one would otherwise be taken
 * relative to the page (`ws://host/undefined`, `ws://host/127.0.0.1:5000`).
 */
function websocketUrl(url) {
  const example = 'e.g. connect(`ws://${location.host}/`)';
  if (typeof url !== 'string' && !(url instanceof URL)) {
    throw new TypeError(`connect(url): url must be a ws:// or wss:// URL string, ${example}; got ${url === undefined ? 'nothing' : typeof url}`);
  }
  const text = String(url);
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(text)?.[1].toLowerCase();
  const wsScheme = { ws: 'ws', wss: 'wss', http: 'ws', https: 'wss' }[scheme];
  if (!wsScheme) {
    throw new TypeError(`connect(url): "${text}" is not a ws:// or wss:// URL (${example})`);
  }
  return wsScheme + text.slice(scheme.length);
}

/** Rethrow outside the current call stack, so one failing listener does not stop the others. */
function report(error) {
  queueMicrotask(() => {
    throw error;
  });
}

/** Call an application callback; report (not propagate) what it throws. */
function safeCall(fn, args) {
  try {
    return { ok: true, value: fn(...args) };
  } catch (error) {
    report(error);
    return { ok: false };
  }
}

/**
 * One namespace over the shared WebSocket: an event emitter plus the namespace's own
 * connection state and offline buffer.
 */
class Namespace {
  /**
   * @param {Manager} manager
   * @param {string} name starts with `/`
   * @param {*} auth payload of this namespace's `connect` frame
   */
  constructor(manager, name, auth) {
    this.manager = manager;
    this.name = name;
    this.auth = auth;
    /** True between this namespace's `connect` and `disconnect`. */
    this.connected = false;
    /** The connection's sid, as the server announced it for this namespace. */
    this.sid = null;
    /** False after `disconnect()` or a server-side disconnect: do not rejoin on reconnect. */
    this.wanted = true;
    /** Whether `auth` was already sent for `/` on the current WebSocket (see `onConnectError`). */
    this.authSent = false;
    this.listeners = new Map();
    this.anyListeners = [];
    /** Frames emitted while not connected: `{text, event, id}`. */
    this.buffer = [];
    /** `ready` promises waiting for the next `connect` or `connect_error`. */
    this.waiters = [];
  }

  // Listeners

  /** Call `fn(data)` for each `event` (or lifecycle event) on this namespace. */
  on(event, fn) {
    const list = this.listeners.get(event) ?? [];
    list.push({ fn, once: false });
    this.listeners.set(event, list);
    return this;
  }

  /** Like `on`, for the next `event` only. */
  once(event, fn) {
    this.on(event, fn);
    this.listeners.get(event).at(-1).once = true;
    return this;
  }

  /** Remove `fn` for `event`; all listeners of `event` without `fn`; everything without arguments. */
  off(event, fn) {
    if (event === undefined) {
      this.listeners.clear();
      this.anyListeners = [];
    } else if (fn === undefined) {
      this.listeners.delete(event);
    } else {
      const list = (this.listeners.get(event) ?? []).filter((l) => l.fn !== fn);
      if (list.length) this.listeners.set(event, list);
      else this.listeners.delete(event);
    }
    return this;
  }

  /**
   * Call `fn(event, data)` for every event the server sends (not for lifecycle events).
   * Its return value never answers an ack request: that is the event's own listener's job.
   */
  onAny(fn) {
    this.anyListeners.push(fn);
    return this;
  }

  /** Remove a catch-all listener (all of them without `fn`). */
  offAny(fn) {
    this.anyListeners = fn === undefined ? [] : this.anyListeners.filter((f) => f !== fn);
    return this;
  }

  /**
   * Call the listeners of `event` with `args`.
   * @returns {{called: number, first: *}} how many ran, and what the first one returned
   *   (that value answers a server's ack request)
   */
  emitLocal(event, ...args) {
    const list = this.listeners.get(event);
    if (!list) return { called: 0, first: { ok: false } };
    const remaining = list.filter((l) => !l.once);
    if (remaining.length === 0) this.listeners.delete(event);
    else if (remaining.length !== list.length) this.listeners.set(event, remaining);
    const results = list.map((l) => safeCall(l.fn, args));
    return { called: list.length, first: results[0] };
  }

  /**
   * The members of presence room `room`, kept in sync (see `Presence` below):
   * `socket.presence('lobby', { namespace: '/chat' })` or `chat.presence('lobby')`.
   */
  presence(room, { namespace = this.name } = {}) {
    const ns = namespace === this.name ? this : this.manager.namespaces.get(namespace) ?? this.manager.namespace(namespace, null);
    ns.presences ??= new Map();
    if (!ns.presences.has(room)) ns.presences.set(room, new Presence(ns, room));
    return ns.presences.get(room);
  }

  // Sending

  /**
   * Send `event` with `data` (any JSON value); buffered while this namespace is not connected.
   * A function as last argument asks for the server's answer, socket.io style: it is called
   * with the answer; a failure (the server's error, a lost session) goes to the `error` event
   * instead. No timeout applies (use `timeout(ms).emit(...)` for one).
   */
  emit(event, ...args) {
    const callback = typeof args.at(-1) === 'function' ? args.pop() : null;
    if (args.length > 1) {
      throw new TypeError(
        `emit("${event}", ...): one data value only (the envelope has one "data"): send an array or an object`,
      );
    }
    const data = args.length ? args[0] : null;
    const text = encode(event, this.name, data, null); // throws now for a reserved name
    if (callback) this.emitWithCallback(event, data, callback, null, false);
    else if (this.manager.options.retries > 0) this.emitUntilAcked(event, data);
    else this.queue(text, event, null);
    return this;
  }

  /**
   * With the `retries` option, a plain emit asks for an ack, so that it arrives (see
   * `emitWithAck`). Given up on (`ack_timeout`, a new session...): a `warning`; refused by
   * the server: an `error`, as without retries.
   */
  emitUntilAcked(event, data) {
    this.emitWithAck(event, data, { plain: true }).catch((error) =>
      this.emitLocal(LOCAL_FAILURES.has(error.code) ? 'warning' : 'error', error),
    );
  }

  /**
   * socket.io's `socket.volatile.emit(event, data)`: sent only if this namespace is connected
   * now (nothing waits in its buffer); otherwise dropped, without a word (cursor positions, a
   * typing indicator: a stale one is worse than none). No ack, no retries.
   */
  get volatile() {
    const ns = this;
    return {
      emit(event, ...args) {
        if (typeof args.at(-1) === 'function' || args.length > 1) {
          throw new TypeError(`volatile.emit("${event}", data): one data value, and no ack (it may be dropped)`);
        }
        const text = encode(event, ns.name, args.length ? args[0] : null, null);
        if (ns.connected && ns.buffer.length === 0 && !ns.manager.overLimit(text)) ns.manager.write(text);
        return ns;
      },
    };
  }

  /** `emit` with an ack callback: `callback(answer)`, or `callback(err, answer)` if `withError`. */
  emitWithCallback(event, data, callback, timeout, withError) {
    this.emitWithAck(event, data, { timeout }).then(
      (answer) => safeCall(callback, withError ? [null, answer] : [answer]),
      (error) => (withError ? safeCall(callback, [error]) : this.emitLocal('error', error)),
    );
  }

  /**
   * socket.io's `socket.timeout(ms)`: `timeout(ms).emit(event, data, (err, answer) => ...)`
   * (err is a `SocketError`, `ack_timeout` after `ms`) and `timeout(ms).emitWithAck(event, data)`.
   */
  timeout(ms) {
    const ns = this;
    return {
      emit(event, ...args) {
        if (typeof args.at(-1) !== 'function') return ns.emit(event, ...args);
        const callback = args.pop();
        if (args.length > 1) throw new TypeError(`emit("${event}", ...): one data value only`);
        const data = args.length ? args[0] : null;
        encode(event, ns.name, data, null); // throws now for a reserved name
        ns.emitWithCallback(event, data, callback, ms, true);
        return ns;
      },
      emitWithAck(event, data = null) {
        return ns.emitWithAck(event, data, { timeout: ms });
      },
    };
  }

  /**
   * Send `event` and wait for the server's acknowledgement.
   *
   * @param {string} event
   * @param {*} [data]
   * @param {{timeout?: number|null}} [options] ms from now until rejecting with `ack_timeout`
   *   (null: wait forever); defaults to the `ackTimeout` option. With the `retries` option,
   *   each timeout that finds no ack checks the link first (a heartbeat that must be answered
   *   within `heartbeatTimeout`) and waits again, up to `retries` times: a dead link is
   *   dropped, the session resumed, and the frame sent again with its id, which the server
   *   handles once (docs/protocol.md, "Client acknowledgements across a drop").
   * @returns {Promise<*>} the handler's return value; rejects with a `SocketError` whose
   *   code is the server's error code, `ack_timeout`, `disconnected` (the frame was sent
   *   but the link or the namespace went away), `buffer_overflow` or `closed`
   */
  emitWithAck(event, data = null, { timeout = this.manager.options.ackTimeout, plain = false } = {}) {
    return new Promise((resolve, reject) => {
      const id = this.manager.nextAckId++;
      const text = encode(event, this.name, data, id); // throws (so rejects) before registering
      // `text` is kept to send the frame once more after a recovery; `seq` orders such re-sends.
      const entry = { namespace: this, text, resolve, reject, timer: null, sent: false, seq: 0, plain };
      if (timeout !== null && timeout !== undefined) {
        let retries = this.manager.options.retries;
        const expire = () => {
          if (retries > 0 && this.manager.pending.has(id)) {
            // Over a live link the answer is only slow (TCP delivered the frame); over a dead
            // one the probe drops it, and the resume sends the frame again.
            retries -= 1;
            this.manager.probe();
            entry.timer = setTimeout(expire, timeout);
            return;
          }
          this.buffer = this.buffer.filter((b) => b.id !== id); // gave up: do not send it later
          const error = new SocketError('ack_timeout', `no ack for "${event}" within ${timeout} ms`);
          this.manager.settleAck(id, error);
        };
        entry.timer = setTimeout(expire, timeout);
      }
      this.manager.pending.set(id, entry);
      this.queue(text, event, id);
    });
  }

  /** Write an encoded frame now if possible, else keep it for the next `connect`. */
  queue(text, event, id) {
    if (this.manager.overLimit(text)) {
      const limit = `the server refused a message of ${this.manager.refusedBytes} bytes as too big`;
      this.drop({ text, event, id }, 'message_too_big', limit);
      return;
    }
    if (this.manager.closed) {
      this.drop({ text, event, id }, 'closed', 'the socket is closed');
      return;
    }
    if (!this.wanted) {
      // Left (or disconnected by the server): nothing would ever send it. Call connect() first.
      this.drop({ text, event, id }, 'disconnected', `${this.name} is not connected`);
      return;
    }
    if (this.connected && this.buffer.length === 0 && this.manager.write(text)) {
      this.manager.markSent(id);
      return;
    }
    this.buffer.push({ text, event, id });
    while (this.buffer.length > this.manager.options.bufferSize) {
      this.drop(this.buffer.shift(), 'buffer_overflow', 'offline buffer full');
    }
  }

  /** Forget a buffered frame, telling whoever waits for it. */
  drop(entry, code, why) {
    const error = new SocketError(code, `${why}: "${entry.event}" dropped`);
    const plain = entry.id !== null && this.manager.pending.get(entry.id)?.plain;
    if (entry.id !== null) this.manager.settleAck(entry.id, error);
    if (!plain) this.emitLocal('warning', error); // a plain emit's own failure handler warns
  }

  /** Send buffered frames in order; stop if the link goes away halfway. */
  flush() {
    while (this.buffer.length && this.connected) {
      const entry = this.buffer[0];
      if (!this.manager.write(entry.text)) return;
      this.buffer.shift();
      this.manager.markSent(entry.id);
    }
  }

  // Connection state

  /**
   * Join another namespace over the same WebSocket (sends its `connect` frame).
   * @param {string} name e.g. `/test`
   * @param {{auth?: *}} [options] payload of the `connect` frame, sent again on every reconnect
   * @returns {Namespace} await its `ready` to know the outcome
   */
  of(name, { auth = null } = {}) {
    return this.manager.join(name, auth);
  }

  /**
   * A promise for the next time this namespace is connected (resolved at once if it is).
   * Rejects with the `connect_error`, or when the socket closes for good.
   * @returns {Promise<Namespace>}
   */
  get ready() {
    if (this.connected) return Promise.resolve(this);
    if (this.manager.closed) return Promise.reject(new SocketError('closed', 'the socket is closed'));
    if (!this.wanted) return Promise.reject(new SocketError('disconnected', `${this.name} left: call connect()`));
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** Settle the `ready` promises. */
  settleWaiters(error) {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) {
      if (error) w.reject(error);
      else w.resolve(this);
    }
  }

  /**
   * Join (again) this namespace, e.g. after `disconnect()` or a refusal; reopens a closed
   * socket, and reconnects now if a reconnection was waiting out its backoff.
   */
  connect() {
    this.wanted = true;
    this.manager.connectNow(this);
    return this;
  }

  /** socket.io's name for `!connected`. */
  get disconnected() {
    return !this.connected;
  }

  /** Connected, or will be by itself: wanted, and the client has not given up. */
  get active() {
    return this.wanted && !this.manager.closed;
  }

  /** socket.io's `id`: the sid while connected, else undefined (`sid` keeps the last one). */
  get id() {
    return this.connected && this.sid !== null ? this.sid : undefined;
  }

  /** Whether the last connection was a recovered session (docs/protocol.md, "Extension: ..."). */
  get recovered() {
    return this.manager.recovered;
  }

  /** Leave this namespace; the WebSocket stays while another namespace is wanted, else closes. */
  disconnect() {
    this.wanted = false;
    if (this.connected) {
      this.manager.write(encode('disconnect', this.name, null, null, true));
      this.markDisconnected('io client disconnect');
    }
    // What waited for this namespace will not be sent: say so instead of letting it hang.
    for (const entry of this.buffer.splice(0)) this.drop(entry, 'disconnected', `${this.name} left`);
    this.settleWaiters(new SocketError('disconnected', `${this.name} left`));
    // socket.io: the last socket of a manager to leave closes the low-level connection.
    const manager = this.manager;
    if (!manager.closed && ![...manager.namespaces.values()].some((ns) => ns.wanted)) manager.close();
    return this;
  }

  /** Close the WebSocket shared by all namespaces, for good (no reconnection). */
  close() {
    this.manager.close();
    return this;
  }

  /** Send this namespace's `connect` frame (docs/protocol.md, "Connecting"). */
  sendConnect() {
    const frame = { event: 'connect', namespace: this.name };
    const auth = this.authValue();
    if (auth !== null && auth !== undefined) frame.data = auth;
    this.manager.write(JSON.stringify(frame));
  }

  /** The auth to send now: `auth` itself, or what it returns when it is a function (a fresh token). */
  authValue() {
    return typeof this.auth === 'function' ? this.auth() : this.auth;
  }

  /** The server's `connect`: we are in (or, in a resumed session, still in). */
  onConnect(data) {
    const recovering = this.manager.recovering;
    if (recovering && data?.recovered === true) {
      // Joined already; the replayed frames come next. `Manager.endRecovery` finishes.
      recovering.resumed.set(this, data);
      return;
    }
    this.joined(data, false);
  }

  /** In: send what waited, then tell the listeners (with whether the session was recovered). */
  joined(data, recovered) {
    if (!this.wanted) {
      // The server joins every socket to `/` on open, and a resumed session is still in the
      // namespaces it had: leave again if the application left.
      this.manager.write(encode('disconnect', this.name, null, null, true));
      this.manager.failSentAcks(this, new SocketError('disconnected', `${this.name} disconnected: left`));
      return;
    }
    if (this.connected) return; // an answer to a repeated `connect` (idempotent)
    this.connected = true;
    this.sid = data?.sid ?? this.manager.sid;
    this.flush(); // buffered emits go first, before anything a `connect` listener sends
    this.emitLocal('connect', { ...(data ?? {}), recovered });
    this.settleWaiters(null);
  }

  /** The server's `connect_error`: refused (or unknown namespace). */
  onConnectError(data) {
    this.manager.recovering?.refused.add(this); // an answer to a `connect` sent before a drop
    if (this.name === '/' && this.auth !== null && !this.authSent) {
      // The server joins `/` without credentials on open; retry once with ours.
      this.authSent = true;
      this.sendConnect();
      return;
    }
    const message = data?.message ?? 'connection refused';
    const error = new SocketError('connect_refused', `${this.name}: ${message}`, data);
    this.emitLocal('connect_error', error);
    this.settleWaiters(error);
  }

  /**
   * No longer connected: fail the acks that can not come any more, tell the listeners.
   * @param {string} reason `io client disconnect`, `io server disconnect`, `transport close`,
   *   `ping timeout`
   * @param {object} [details] e.g. `{code}` of the WebSocket close
   * @param {boolean} [resumable] the session may be recovered: its acks may still come
   */
  markDisconnected(reason, details = {}, resumable = false) {
    if (!this.connected) return;
    this.connected = false;
    if (!resumable) {
      this.manager.failSentAcks(this, new SocketError('disconnected', `${this.name} disconnected: ${reason}`));
    }
    this.emitLocal('disconnect', reason, details);
  }

  /** Dispatch one frame from the server addressed to this namespace. */
  receive(frame, ws) {
    switch (frame.event) {
      case 'connect':
        return this.onConnect(frame.data);
      case 'connect_error':
        return this.onConnectError(frame.data);
      case 'disconnect':
        // The server left us out (docs/protocol.md, "Leaving"); do not rejoin by ourselves.
        this.wanted = false;
        this.markDisconnected('io server disconnect');
        for (const entry of this.buffer.splice(0)) this.drop(entry, 'disconnected', `${this.name} disconnected by the server`);
        return undefined;
      case 'error': {
        const { code = 'error', message = 'error' } = frame.data ?? {};
        return this.emitLocal('error', new SocketError(code, message, frame.data));
      }
      case 'presence_state':
      case 'presence_diff':
      case 'presence_count': {
        const room = this.presences?.get(frame.data?.room);
        if (room) return room.receive(frame.event, frame.data);
        return this.receiveEvent(frame, ws);
      }
      default:
        return this.receiveEvent(frame, ws);
    }
  }

  /** An application event: catch-all listeners, then the event's listeners, then the ack. */
  receiveEvent(frame, ws) {
    for (const fn of [...this.anyListeners]) safeCall(fn, [frame.event, frame.data]);
    const { called, first } = this.emitLocal(frame.event, frame.data);
    // The first listener's return value answers the server's ack request. No listener (or a
    // throwing one) sends nothing: an invented `null` would look like a real answer.
    if (Number.isInteger(frame.id) && called > 0 && first.ok) {
      Promise.resolve(first.value)
        .then((value) => this.manager.writeAck(ws, encode('ack', this.name, value ?? null, frame.id, true)))
        .catch(report);
    }
  }
}

/** Encode an envelope; refuse reserved event names unless the client itself speaks them. */
function encode(event, namespace, data, id, internal = false) {
  if (typeof event !== 'string' || event.length === 0) {
    throw new TypeError('event must be a non-empty string');
  }
  if (!internal && RESERVED_EVENTS.has(event)) {
    throw new SocketError('reserved_event', `"${event}" is reserved`);
  }
  const frame = { event, namespace, data: data === undefined ? null : data };
  if (id !== null) frame.id = id;
  return JSON.stringify(frame);
}

/**
 * The WebSocket and everything shared by its namespaces: the current transport,
 * reconnection, heartbeat, ack ids.
 */
class Manager {
  constructor(url, options) {
    this.url = url;
    this.options = options;
    /** @type {Map<string, Namespace>} */
    this.namespaces = new Map();
    this.ws = null;
    /** The current WebSocket's first frame was accepted: namespaces can be joined. */
    this.ready = false;
    /** Closed by the application or given up: no reconnection. */
    this.closed = true;
    /** Attempts since the last ready WebSocket (drives the backoff). */
    this.attempts = 0;
    this.sid = null;
    /** Ack ids are never reused, so a late ack can not settle a newer request. */
    this.nextAckId = 0;
    /** id -> {namespace, text, resolve, reject, timer, sent, seq} */
    this.pending = new Map();
    /** Counts frames with an id as they are written, so re-sends keep their original order. */
    this.sendSeq = 0;
    /** Size in bytes of the smallest frame the server refused as too big (1009); null: none. */
    this.refusedBytes = null;
    // Connection state recovery (docs/protocol.md, "Extension: connection state recovery")
    /** The server's single-use recovery token; null when it offers no recovery. */
    this.token = null;
    /** Offset of the last frame received in the current session; null when none. */
    this.offset = null;
    /** Whether the current (or last) connection resumed the previous session. */
    this.recovered = false;
    /** Counts sessions; each WebSocket is tagged with the one it carries (see `writeAck`). */
    this.session = 0;
    /** Why the last link was lost, for the errors of calls a new session can not answer. */
    this.dropReason = null;
    /**
     * While a resumed session replays what we missed: `{resumed: Map<Namespace, data>,
     * refused: Set<Namespace>}`. Ends with the answer to a heartbeat sent right after the
     * server's first frame: the server answers it after the whole replay.
     */
    this.recovering = null;
    /** A link given up as dead but not closed: closing it would end a session we may resume. */
    this.stale = null;
    this.reconnectTimer = null;
    this.heartbeatTimer = null;
    this.deadTimer = null;
    /** The browser said `offline` (and not `online` since): reconnections wait for `online`. */
    this.offline = false;
    /** A reconnection is due but waits for the browser's `online` event. */
    this.waitingOnline = false;
    this.onOffline = () => this.wentOffline();
    this.onOnline = () => this.cameOnline();
    this.listeningNetwork = false;
  }

  /** Follow the browser's `offline`/`online` events while the socket is open (not closed). */
  listenNetwork(on) {
    if (typeof window === 'undefined' || typeof window.addEventListener !== 'function') return;
    if (on === this.listeningNetwork) return;
    this.listeningNetwork = on;
    const method = on ? 'addEventListener' : 'removeEventListener';
    window[method]('offline', this.onOffline);
    window[method]('online', this.onOnline);
  }

  /**
   * The browser knows the network is gone: the link is as good as dead. Drop it without a
   * close frame (the server keeps the session for a resume) and wait for `online`.
   */
  wentOffline() {
    this.offline = true;
    if (this.closed) return;
    if (this.ws) {
      this.lose('offline', { code: null }, 'backoff');
    } else if (this.reconnectTimer !== null) {
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
      this.waitingOnline = true;
    }
  }

  /** Back online: reconnect now rather than wait out a backoff. */
  cameOnline() {
    this.offline = false;
    if (!this.closed && (this.waitingOnline || this.reconnectTimer !== null)) this.reconnectNow();
  }

  /** Make the reconnection that is waiting (backoff, or offline) now. */
  reconnectNow() {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.waitingOnline = false;
    this.broadcastLocal('reconnect_attempt', this.attempts);
    if (!this.closed) this.open(); // a `reconnect_attempt` listener may have called close()
  }

  /** Get or create a namespace object. */
  namespace(name, auth) {
    if (typeof name !== 'string' || !name.startsWith('/')) throw new TypeError('a namespace starts with "/"');
    let ns = this.namespaces.get(name);
    if (!ns) {
      ns = new Namespace(this, name, auth);
      this.namespaces.set(name, ns);
    } else if (auth !== null) {
      ns.auth = auth;
    }
    return ns;
  }

  /** `socket.of(name, {auth})`: a namespace multiplexed over this WebSocket. */
  join(name, auth) {
    const ns = this.namespace(name, auth);
    ns.wanted = true;
    this.requestJoin(ns);
    return ns;
  }

  /** Have `ns` joined: open the socket if closed, else send its `connect` when the link is up. */
  requestJoin(ns) {
    if (this.closed) this.open();
    else if (this.ready && !ns.connected) ns.sendConnect();
  }

  /** `ns.connect()`: as `requestJoin`, but a reconnection waiting for its turn happens now. */
  connectNow(ns) {
    if (!this.closed && (this.reconnectTimer !== null || this.waitingOnline)) this.reconnectNow();
    else this.requestJoin(ns);
  }

  /** Every namespace: lifecycle events that concern the whole connection. */
  broadcastLocal(event, ...args) {
    for (const ns of this.namespaces.values()) ns.emitLocal(event, ...args);
  }

  // Transport

  /** Open a new WebSocket (no-op if one is open or opening). */
  open() {
    if (this.ws) return;
    this.closed = false;
    this.listenNetwork(true);
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.waitingOnline = false;
    const resuming = this.token !== null;
    // With auth for `/`, connect `/` ourselves so the connect handler sees it on the first
    // attempt (docs/protocol.md, "Connecting": `connect=client`).
    const root = this.namespaces.get('/');
    const sendsAuth = !resuming && root !== undefined && root.auth !== null && root.auth !== undefined;
    const url = resuming
      ? recoveryUrl(this.url, this.offset)
      : sendsAuth
        ? withQuery(this.url, 'connect=client')
        : this.url;
    const ws = new WebSocket(url);
    ws.resuming = resuming;
    ws.sendsAuth = sendsAuth;
    this.ws = ws;
    this.ready = false;
    if (sendsAuth) {
      ws.onopen = () => {
        if (ws !== this.ws) return;
        root.authSent = true; // a refusal now is final: no second try with the same auth
        ws.send(JSON.stringify({ event: 'connect', namespace: '/', data: root.authValue() }));
      };
    } else if (resuming) {
      // The token goes in the first frame, not in the URL: browsers print the URL of a failed
      // attempt in the console, and proxies log it (docs/protocol.md, "Resuming").
      const token = this.token;
      ws.onopen = () => {
        if (ws === this.ws) ws.send(JSON.stringify({ event: 'heartbeat', namespace: '/', data: { recover: token } }));
      };
    }
    ws.onmessage = (event) => this.onMessage(ws, event.data);
    ws.onclose = (event) => this.onClose(ws, event.code);
    // The server's first frame must come within the heartbeat timeout, or we never know
    // whether it speaks our protocol (never hang).
    this.armDeadTimer(ws);
  }

  /** Write one frame on the current WebSocket if it is usable; false if not. */
  write(text) {
    return this.writeOn(this.ws, text);
  }

  /** Write on a given WebSocket only (false if it is not the current one, or not usable). */
  writeOn(ws, text) {
    if (!ws || ws !== this.ws || !this.ready || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(text);
    // Keep the largest frame written: the one a 1009 is about (see `refusedTooBig`). A text of
    // n UTF-16 units is at most 3n bytes: most frames are never measured.
    if (text.length * 3 > (ws.largest?.bytes ?? 0)) {
      const bytes = utf8Length(text);
      if (bytes > (ws.largest?.bytes ?? 0)) ws.largest = { bytes, text };
    }
    return true;
  }

  /** Whether `text` is as large as a frame the server refused with 1009. */
  overLimit(text) {
    return this.refusedBytes !== null && text.length * 3 >= this.refusedBytes && utf8Length(text) >= this.refusedBytes;
  }

  /**
   * Close code 1009: a frame written on `ws` was over the server's size limit. It is the
   * largest one (or as large as it): every frame the server read before was within the limit.
   * Its call fails with `message_too_big` (else the namespace gets an `error`), it is never
   * sent again, and later frames of its size or more are refused before sending.
   */
  refusedTooBig(ws) {
    const largest = ws.largest;
    if (!largest) return;
    this.refusedBytes = Math.min(this.refusedBytes ?? Infinity, largest.bytes);
    let frame = null;
    try {
      frame = JSON.parse(largest.text);
    } catch {
      frame = null;
    }
    const event = typeof frame?.event === 'string' ? frame.event : 'a message';
    const error = new SocketError(
      'message_too_big',
      `"${event}" (${largest.bytes} bytes) is over the server's size limit (close code 1009): not delivered`,
      { event, bytes: largest.bytes },
    );
    error.closeCode = 1009;
    if (Number.isInteger(frame?.id) && this.pending.has(frame.id)) {
      this.settleAck(frame.id, error);
    } else {
      (this.namespaces.get(frame?.namespace) ?? this.namespaces.get('/'))?.emitLocal('error', error);
    }
  }

  /**
   * Answer a server's ack request that came on `ws`: the ids belong to one session, which a
   * resume carries over to the next WebSocket. An answer made while offline is lost.
   */
  writeAck(ws, text) {
    const current = this.ws;
    return current !== null && current.session === ws.session && this.writeOn(current, text);
  }

  onMessage(ws, text) {
    if (ws !== this.ws) return;
    this.disarmDeadTimer(); // any frame proves the link is alive
    let frame;
    try {
      frame = typeof text === 'string' ? JSON.parse(text) : null;
    } catch {
      frame = null;
    }
    const valid =
      frame !== null && typeof frame === 'object' && !Array.isArray(frame) && typeof frame.event === 'string';
    if (valid) {
      // Defaults of docs/protocol.md, "The envelope".
      if (typeof frame.namespace !== 'string') frame.namespace = '/';
      if (frame.data === undefined) frame.data = null;
    }
    if (!this.ready) {
      this.onFirstFrame(ws, valid ? frame : null);
      return;
    }
    if (valid) {
      if (typeof frame.offset === 'string') this.offset = frame.offset;
      this.dispatch(frame, ws);
    }
  }

  /**
   * Check the server's first frame: a `connect` on `/` carrying `protocol: 1`, or a
   * `connect_error` on `/` (docs/protocol.md, "Connecting"). Anything else is a server we
   * can not read: close with 4010 rather than wait for frames we would misunderstand.
   */
  onFirstFrame(ws, frame) {
    const isRoot = frame?.namespace === '/';
    if (isRoot && frame.event === 'connect' && frame.data?.protocol === PROTOCOL) {
      this.sid = frame.data.sid ?? null;
    } else if (!(isRoot && frame.event === 'connect_error')) {
      const version = isRoot && frame.event === 'connect' ? frame.data?.protocol : undefined;
      const what = version === undefined ? 'an unexpected first frame' : `protocol ${JSON.stringify(version)}`;
      const message = `server sent ${what}; this client speaks protocol ${PROTOCOL}`;
      this.abandon(ws, new SocketError('unsupported_protocol', message));
      return;
    }
    const recovered = ws.resuming && frame.event === 'connect' && frame.data?.recovered === true;
    if (!recovered) this.offset = null; // a new session: the old one's offsets mean nothing here
    if (typeof frame.offset === 'string') this.offset = frame.offset;
    this.becomeReady(recovered);
    if (ws === this.ws) this.dispatch(frame, ws); // a `reconnect` listener may have closed it
  }

  /**
   * The WebSocket speaks our protocol: start the heartbeat, and either finish the resume of
   * the previous session or start a new one (fail what it can not answer, join the namespaces).
   */
  becomeReady(recovered) {
    this.ready = true;
    this.recovered = recovered;
    if (!recovered) this.session += 1;
    this.ws.session = this.session;
    const attempts = this.attempts;
    this.attempts = 0;
    this.closeStale();
    this.startHeartbeat();
    if (recovered) {
      // The server answers heartbeats in order: this one's answer comes after the replay.
      this.recovering = { resumed: new Map(), refused: new Set() };
      if (this.write('{"event":"heartbeat"}')) this.armDeadTimer(this.ws);
    } else {
      this.failAllSentAcks(`${this.dropReason}, and the new session did not recover it`);
    }
    if (attempts > 0) this.broadcastLocal('reconnect', attempts, { recovered });
    if (recovered || !this.ws) return; // a `reconnect` listener may have closed the socket
    for (const ns of this.namespaces.values()) {
      ns.authSent = ns.name === '/' && this.ws.sendsAuth === true; // sent with the first connect
      // `/` is joined on open; every other namespace is joined again with its auth.
      if (ns.name !== '/' && ns.wanted) ns.sendConnect();
    }
  }

  /**
   * The replay of a resumed session is over: rejoin the namespaces the session did not keep,
   * send once more the calls that got no answer, then the buffered emits, and say `connect`.
   */
  endRecovery() {
    const { resumed, refused } = this.recovering;
    this.recovering = null;
    for (const ns of this.namespaces.values()) {
      if (resumed.has(ns)) continue;
      this.failSentAcks(ns, new SocketError('disconnected', `${ns.name} was not part of the resumed session`));
      ns.authSent = false;
      if (ns.name !== '/' && ns.wanted && !refused.has(ns)) ns.sendConnect();
    }
    const unanswered = [...this.pending.values()]
      .filter((entry) => entry.sent && resumed.has(entry.namespace) && entry.namespace.wanted)
      .sort((a, b) => a.seq - b.seq);
    for (const entry of unanswered) {
      if (!this.write(entry.text)) return; // lost again: they wait for the next resume
      entry.seq = this.sendSeq++;
    }
    for (const [ns, data] of resumed) {
      if (this.ws) ns.joined(data, true); // a `connect` listener may have closed the socket
    }
  }

  dispatch(frame, ws) {
    if (frame.event === 'heartbeat') {
      if (this.recovering) this.endRecovery();
      return;
    }
    if (frame.event === 'connect' && frame.namespace === '/') {
      // Every `connect` for `/` carries a new token; the previous one stops working.
      const token = frame.data?.recovery?.token;
      this.token = typeof token === 'string' ? token : null;
    }
    if (frame.event === 'ack') {
      this.settleAck(frame.id, null, frame.data);
      return;
    }
    if (frame.event === 'error' && frame.data?.code !== 'unknown_ack' && this.pending.has(frame.id)) {
      // The server refused a frame that asked for an ack; its error carries that id. (An
      // `unknown_ack` error carries the id of one of *our* ack replies, a server-chosen id.)
      const { code = 'error', message = 'error' } = frame.data ?? {};
      this.settleAck(frame.id, new SocketError(code, message, frame.data));
      return;
    }
    this.namespaces.get(frame.namespace)?.receive(frame, ws);
  }

  /**
   * The WebSocket closed. Decide from the close code whether and when to reconnect
   * (docs/protocol.md, "Close codes").
   */
  onClose(ws, code) {
    if (ws !== this.ws) return;
    if (code === 1009) this.refusedTooBig(ws);
    const action = CLOSE_ACTIONS.get(code) ?? 'backoff';
    const reason = code === 4001 ? 'io server disconnect' : 'transport close';
    this.lose(reason, { code }, action);
  }

  /** Drop the current WebSocket and everything tied to it, then reconnect or give up. */
  lose(reason, details, action) {
    // The server keeps a session whose link dropped, and its answers to our calls (after a
    // 1009 too: only the frame that was too big is not sent again, see `refusedTooBig`).
    const resumable = this.token !== null && action !== 'stop' && this.options.reconnect;
    // Closed before the server's greeting: this attempt failed (nothing was connected).
    const failedAttempt = !this.ready;
    // A link we think dead is left to die by itself: a closing handshake that got through
    // would end the session we are about to resume.
    const dead = (reason === 'ping timeout' && this.ready) || reason === 'offline';
    this.detach(1000, '', resumable && dead);
    this.recovering = null;
    this.dropReason = reason;
    for (const ns of this.namespaces.values()) ns.markDisconnected(reason, details, resumable);
    if (this.closed) return; // a `disconnect` listener called close()
    if (failedAttempt) {
      const error = attemptError(details.code, reason, this.options, foreignOrigin(this.url));
      for (const ns of this.namespaces.values()) {
        if (ns.wanted && !ns.connected) ns.emitLocal('connect_error', error);
      }
      if (this.closed) return; // a `connect_error` listener called close()
    }
    if (action === 'stop' || !this.options.reconnect) {
      this.giveUp(new SocketError('closed', `connection closed (${reason}, code ${details.code})`));
    } else {
      this.scheduleReconnect(action);
    }
  }

  /**
   * Forget the current WebSocket and stop its timers; close it, unless `keepOpen` (then it is
   * closed once another one is ready, or when giving up).
   */
  detach(code = 1000, why = '', keepOpen = false) {
    const ws = this.ws;
    this.ws = null;
    this.ready = false;
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
    this.disarmDeadTimer();
    if (ws) {
      ws.onmessage = ws.onclose = null;
      if (keepOpen) {
        this.closeStale();
        this.stale = ws;
      } else if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) {
        ws.close(code, why);
      }
    }
  }

  /** Close the link given up as dead, if any (its session was resumed elsewhere, or is over). */
  closeStale() {
    const ws = this.stale;
    this.stale = null;
    if (ws && (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN)) ws.close(1000, '');
  }

  /** The server speaks another protocol: close with 4010 and report it; do not retry. */
  abandon(ws, error) {
    this.detach(CLOSE_UNSUPPORTED_PROTOCOL, 'unsupported protocol');
    this.giveUp(error); // first: listeners see `active` false, this is final
    for (const ns of this.namespaces.values()) if (ns.wanted) ns.emitLocal('connect_error', error);
  }

  /** Stop for good: no reconnection; everything still waiting fails with `error`. */
  giveUp(error) {
    this.closed = true;
    this.listenNetwork(false);
    this.waitingOnline = false;
    this.attempts = 0; // a later `connect()` starts afresh
    this.token = null; // ...with a new session: a closed socket ends its session
    this.recovering = null;
    this.closeStale();
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    for (const ns of this.namespaces.values()) {
      for (const entry of ns.buffer.splice(0)) if (entry.id !== null) this.settleAck(entry.id, error);
      ns.settleWaiters(error);
    }
    for (const id of [...this.pending.keys()]) this.settleAck(id, error);
  }

  /** `socket.close()`: leave everything and stay closed. */
  close() {
    const error = new SocketError('closed', 'the socket was closed');
    for (const ns of this.namespaces.values()) ns.markDisconnected('io client disconnect');
    this.detach(1000, 'client closed');
    this.giveUp(error);
  }

  // Reconnection

  /** Wait (exponential backoff with jitter and a cap), then open a new WebSocket. */
  scheduleReconnect(action) {
    if (this.attempts >= this.options.reconnectAttempts) {
      this.broadcastLocal('reconnect_failed', this.attempts);
      this.giveUp(new SocketError('reconnect_failed', `gave up after ${this.attempts} attempts`));
      return;
    }
    // "Reconnect at once" (4000) at most once per reconnectDelayMax: a server that keeps
    // greeting then dropping us this way gets the ordinary backoff instead of a busy loop.
    const now = Date.now();
    // "Soon" (1012) is "now" spread over RESTART_SPREAD_MS: a restarting node closes all its
    // clients at once, and they should not all claim their sessions on the others together.
    const quick = action === 'now' || action === 'soon';
    const atOnce = quick && this.attempts === 0 && now - (this.lastAtOnce ?? -Infinity) > this.options.reconnectDelayMax;
    if (atOnce) this.lastAtOnce = now;
    const spread = action === 'soon' ? Math.random() * RESTART_SPREAD_MS : 0;
    const delay = atOnce ? spread : this.backoff(quick ? 'backoff' : action);
    this.attempts += 1;
    const attempt = this.attempts;
    if (this.offline) {
      this.waitingOnline = true; // `online` (or a `connect()`) makes the attempt
      return;
    }
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.broadcastLocal('reconnect_attempt', attempt);
      if (!this.closed) this.open(); // a `reconnect_attempt` listener may have called close()
    }, delay);
  }

  /**
   * Delay before the next attempt, in ms: exponential with jitter in [1 - f, 1 + f]; a long
   * backoff is at least `reconnectDelayLong`, its jitter only adds to it.
   */
  backoff(action) {
    const { reconnectDelay, reconnectDelayMax, reconnectDelayLong, randomizationFactor } = this.options;
    const delay = Math.min(reconnectDelayMax, reconnectDelay * 2 ** this.attempts);
    if (action === 'long') return Math.max(delay, reconnectDelayLong) * (1 + randomizationFactor * Math.random());
    return delay * (1 + randomizationFactor * (2 * Math.random() - 1));
  }

  // Heartbeat (docs/protocol.md, "Heartbeat")

  /** Check the link now: a heartbeat that must be answered within `heartbeatTimeout`. */
  probe() {
    if (this.ws && this.write('{"event":"heartbeat"}')) this.armDeadTimer(this.ws);
  }

  /**
   * Send a heartbeat every `heartbeatInterval`. The dead timer is armed by a heartbeat and
   * disarmed by any frame, so "dead" means a heartbeat went unanswered for
   * `heartbeatTimeout`: a background tab whose timers are throttled does not mistake its
   * own slowness for a dead link.
   */
  startHeartbeat() {
    const { heartbeatInterval } = this.options;
    if (heartbeatInterval === null) return;
    const ws = this.ws;
    this.heartbeatTimer = setInterval(() => {
      if (this.writeOn(ws, '{"event":"heartbeat"}')) this.armDeadTimer(ws);
    }, heartbeatInterval);
  }

  armDeadTimer(ws) {
    const { heartbeatTimeout } = this.options;
    if (heartbeatTimeout === null || this.deadTimer !== null) return;
    this.deadTimer = setTimeout(() => {
      this.deadTimer = null;
      if (ws === this.ws) this.lose('ping timeout', { code: null }, 'backoff');
    }, heartbeatTimeout);
  }

  disarmDeadTimer() {
    if (this.deadTimer === null) return;
    clearTimeout(this.deadTimer);
    this.deadTimer = null;
  }

  // Acknowledgements

  /** The frame with this ack id has been written: from now on a disconnect fails it. */
  markSent(id) {
    const entry = id === null ? undefined : this.pending.get(id);
    if (entry) {
      entry.sent = true;
      entry.seq = this.sendSeq++;
    }
  }

  /** Resolve (`error` null) or reject a pending ack; unknown ids are ignored (late acks). */
  settleAck(id, error, value) {
    const entry = this.pending.get(id);
    if (!entry) return;
    this.pending.delete(id);
    clearTimeout(entry.timer);
    if (error) entry.reject(error);
    else entry.resolve(value === undefined ? null : value);
  }

  /** A namespace went away: acks for frames already sent there can never come. */
  failSentAcks(namespace, error) {
    for (const [id, entry] of this.pending) {
      if (entry.namespace === namespace && entry.sent) this.settleAck(id, error);
    }
  }

  /** A new session: acks for frames sent to the previous one (kept for a resume) can never come. */
  failAllSentAcks(why) {
    for (const [id, entry] of this.pending) {
      if (entry.sent) {
        this.settleAck(id, new SocketError('disconnected', `${entry.namespace.name} disconnected: ${why}`));
      }
    }
  }
}

/** This page's origin when it differs from the server's (the server may refuse it), else null. */
function foreignOrigin(url) {
  if (typeof location === 'undefined' || !/^https?:$/.test(location.protocol)) return null;
  try {
    return new URL(url).host === location.host ? null : location.origin; // as the server compares
  } catch {
    return null;
  }
}

/** The size of `text` in UTF-8, in bytes (what the server's size limit counts). */
function utf8Length(text) {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0x80) bytes += 1;
    else if (unit < 0x800) bytes += 2;
    else if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      bytes += 4; // a surrogate pair: one code point of four bytes
      i += 1;
    } else bytes += 3;
  }
  return bytes;
}

/** The `connect_error` of an attempt whose WebSocket closed before the server's greeting. */
function attemptError(code, reason, options, foreign = null) {
  let error;
  if (reason === 'offline') {
    error = new SocketError('connect_failed', 'could not connect: the browser is offline');
  } else if (reason === 'ping timeout') {
    error = new SocketError('connect_timeout', `could not connect: no greeting from the server within ${options.heartbeatTimeout} ms`);
  } else if (code === 4002) {
    error = new SocketError('server_full', 'server full: too many connections (close code 4002); retrying later');
  } else if (code === 4010) {
    error = new SocketError('unsupported_protocol', 'the server does not speak this protocol version (close code 4010)');
  } else if (code === 1008) {
    error = new SocketError('rate_limited', 'rate limited by the server (close code 1008); retrying later');
  } else if ((code === 1005 || code === 1006 || code === null || code === undefined) && foreign) {
    // A 403 for a foreign Origin looks like this too; the server's allowed_origins decides.
    error = new SocketError('connect_failed', `could not connect (server down, or this page's origin ${foreign} is not in the server's allowed origins)`);
  } else if (code === 1005 || code === 1006 || code === null || code === undefined) {
    error = new SocketError('connect_failed', 'could not connect (server down, or this origin is refused)');
  } else {
    error = new SocketError('connect_failed', `could not connect: closed before the server's greeting (close code ${code})`);
  }
  error.closeCode = code ?? null;
  return error;
}

/** The URL with `param` added to its query. */
function withQuery(url, param) {
  const hash = url.indexOf('#');
  const base = hash === -1 ? url : url.slice(0, hash);
  return `${base}${base.includes('?') ? '&' : '?'}${param}${hash === -1 ? '' : url.slice(hash)}`;
}

/**
 * The URL that asks to resume a session (docs/protocol.md, "Resuming"): the application's URL
 * with `recover=1` (the token follows in the first frame) and `offset` (when there is one)
 * added to its query, which is kept as is.
 */
function recoveryUrl(url, offset) {
  const hash = url.indexOf('#');
  const base = hash === -1 ? url : url.slice(0, hash);
  const question = base.indexOf('?');
  const path = question === -1 ? base : base.slice(0, question);
  const query = question === -1 ? [] : base.slice(question + 1).split('&');
  const kept = query.filter((part) => part !== '' && !/^(recover|offset)(=|$)/.test(part));
  kept.push('recover=1');
  if (offset !== null) kept.push(`offset=${encodeURIComponent(offset)}`);
  return `${path}?${kept.join('&')}`;
}

/**
 * One presence room as the server reports it (docs/protocol.md, "Presence").
 *
 *     const lobby = chat.presence('lobby');
 *     lobby.on('join', (key, entry) => ...);   // entry: {meta, conns}
 *     lobby.on('leave', (key, entry) => ...);
 *     lobby.on('update', (key, entry, previous) => ...);
 *     lobby.on('sync', () => render(lobby.list()));
 *     lobby.on('count', ({ users, connections }) => ...);
 *     await lobby.synced;                      // the first presence_state
 *     while (await lobby.more()) {}            // the pages past the first one
 *     await lobby.update({ status: 'away' });  // if the server takes client updates
 *
 * Events fire for real changes of what this view holds only. A diff whose `from` is past the
 * view's revision means frames were lost: the view asks for the list again by itself
 * (`presence_list`) and fires what changed. Members live in a `Map` (a key named
 * `__proto__` is a key like any other).
 */
export class Presence {
  constructor(namespace, room) {
    this.namespace = namespace;
    this.room = room;
    /** key -> {meta, conns} */
    this.members = new Map();
    this.count = { users: 0, connections: 0 };
    /** The revision of the last state or diff applied (null before the first state). */
    this.rev = null;
    /** More members past this key: `more()` fetches them. */
    this.cursor = null;
    /** How often a revision gap made this view ask for the list again. */
    this.resyncs = 0;
    this.listeners = new Map();
    this.resyncing = null;
    let settle;
    /** Resolves on the first state. */
    this.synced = new Promise((resolve) => { settle = resolve; });
    this.settleSynced = settle;
  }

  on(event, fn) {
    const list = this.listeners.get(event) ?? [];
    list.push(fn);
    this.listeners.set(event, list);
    return this;
  }

  off(event, fn) {
    this.listeners.set(event, (this.listeners.get(event) ?? []).filter((f) => f !== fn));
    return this;
  }

  /** The members as an array of `{key, meta, conns}`, in key order. */
  list() {
    return [...this.members.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([key, entry]) => ({ key, ...entry }));
  }

  get(key) {
    return this.members.get(key);
  }

  /** Fetch the next page; resolves to whether more pages remain. */
  async more() {
    if (this.cursor === null) return false;
    const start = this.cursor;
    const page = await this.namespace.emitWithAck('presence_list', { room: this.room, cursor: start });
    this.replaceRange(start, page.cursor, page.members);
    this.cursor = page.cursor;
    return this.cursor !== null;
  }

  update(meta) {
    return this.namespace.emitWithAck('presence_update', { room: this.room, meta });
  }

  /** Fetch the whole list again and fire what changed. */
  async resync() {
    this.resyncs += 1;
    let page = await this.namespace.emitWithAck('presence_list', { room: this.room, cursor: null });
    this.state(page);
    while (page.cursor !== null) {
      const start = page.cursor;
      page = await this.namespace.emitWithAck('presence_list', { room: this.room, cursor: start });
      this.replaceRange(start, page.cursor, page.members);
    }
    this.cursor = null;
    this.fire('sync');
  }

  receive(event, data) {
    if (event === 'presence_state') {
      this.state(data);
      this.fire('sync');
    } else if (event === 'presence_diff') {
      this.diff(data);
    } else if (event === 'presence_count') {
      this.count = { ...data.count };
      this.fire('count', this.count);
    }
  }

  state(data) {
    this.rev = data.rev;
    this.count = { ...data.count };
    this.cursor = data.cursor;
    this.replaceRange(null, data.cursor, data.members);
    this.settleSynced();
  }

  diff(data) {
    if (this.rev === null || data.rev <= this.rev) return; // before the state, or in it already
    if (data.from > this.rev) {
      // Diffs were lost: the list says what they said.
      this.resyncing ??= this.resync().catch(report).finally(() => { this.resyncing = null; });
      return;
    }
    this.rev = data.rev;
    this.count = { ...data.count };
    for (const [key, entry] of Object.entries(data.joins)) this.set(key, entry);
    for (const [key, entry] of Object.entries(data.updates)) this.set(key, entry);
    for (const key of data.leaves) this.set(key, null);
  }

  /** Make the keys in (after, upto] (upto null: to the end) exactly `members`. */
  replaceRange(after, upto, members) {
    for (const key of [...this.members.keys()]) {
      if ((after === null || key > after) && (upto === null || key <= upto) && !Object.hasOwn(members, key)) {
        this.set(key, null);
      }
    }
    for (const [key, entry] of Object.entries(members)) this.set(key, entry);
  }

  set(key, entry) {
    const old = this.members.get(key);
    if (entry === null) {
      if (old !== undefined) {
        this.members.delete(key);
        this.fire('leave', key, old);
      }
    } else if (old === undefined) {
      this.members.set(key, entry);
      this.fire('join', key, entry);
    } else if (JSON.stringify(old) !== JSON.stringify(entry)) {
      this.members.set(key, entry);
      this.fire('update', key, entry, old);
    }
  }

  fire(event, ...args) {
    for (const fn of [...(this.listeners.get(event) ?? [])]) safeCall(fn, args);
  }
}
