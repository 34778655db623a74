#!/usr/bin/env node
// Load generator for bench/run.py: drives a plainsocket-compatible server (docs/protocol.md) with
// many clients in one Node process and prints its measurements as one JSON line on stdout
// (preceded by {"phase":"measure"} and {"phase":"measured"} lines around the measured window, so
// the driver can read the server's CPU time over exactly that window).
//
//   node bench/loadgen.js --url ws://127.0.0.1:PORT --mode MODE [options]
//
// Modes (every client first completes the /test connect: "/" greeting, connect, "Connected"):
//   check     a `ws` client and two of our own verify every frame the benchmark relies on;
//             exit 1 otherwise
//   echo      --clients C each keep --window W "my event" frames in flight; counts responses/s
//   fanout    --clients N joined to /test; --senders S emit "my broadcast event" with at most
//             --window W of their own broadcasts in flight (a broadcast leaves the window when
//             its sender receives its own copy); counts deliveries/s across all clients
//   latency   --clients N joined to /test; one of them emits --rate broadcasts/s; reports the
//             delivery latency (emit to receipt, on one clock) over all deliveries
//   connects  up to --total connections, --concurrency K at a time: open, join /test, close
//             (waiting for the close handshake); reports completed connections/s
//   idle      --clients N joined to /test, then prints {"phase":"ready"} and holds them until a
//             line arrives on stdin (or --hold seconds pass), then closes them and reports
//   chat      --clients N in rooms of --room-size (named r<--room-base + k>), each sending
//             --rate "my room event" per second to its room once "go" arrives on stdin (after
//             {"phase":"ready"}); reports the delivery latency as a histogram (0.01 ms bins) so
//             the driver can merge several load generators; every room lives in one process, so
//             emit and receipt are read from one clock
//   crowd     --clients N joined to /test, opened --open-concurrency at a time and tolerating
//             failures; prints {"phase":"ready"}, then on stdin: "send" makes the first client
//             emit one broadcast, {"phase":"delivered"} follows once every client here has it,
//             "close" reports how many got it exactly once, not at all, or more than once
//
// --protocol plainsocket (the default) speaks docs/protocol.md; --protocol socketio speaks
// Socket.IO's wire format (Engine.IO 4 over a WebSocket, no long-polling) to the same demo
// handlers, for the python-socketio and Node socket.io peers. --local-address A,B,... binds the
// clients' sockets to those loopback addresses in turn (127.0.0.x), so several load generators
// can open more connections to one port than one source address has ephemeral ports.
//
// --client wire (the default) is the small RFC 6455 client below: it frames each distinct
// message once and counts incoming frames without decoding them, so that one core of Node
// outpaces one core of Python even in a fan-out to thousands. --client ws runs the same load
// through the `ws` package (about half as fast at taking in a fan-out), to cross-check. Every mode reports `cpu`: this process's CPU time over the measured window as a
// percentage of one core; near 100 % means the load generator, not the server, was the limit.
// Every loop is bounded: --duration for timed modes, --deadline for the whole process.
"use strict";

const crypto = require("node:crypto");
const net = require("node:net");
const { performance } = require("node:perf_hooks");
const WebSocket = require("ws");

const NAMESPACE = "/test";
const MY_RESPONSE = Buffer.from('"my response"');
const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"; // RFC 6455 section 1.3
const JOIN_TIMEOUT_MS = 10000;
const READ_BUFFER = Buffer.allocUnsafe(256 * 1024); // shared by all sockets: one read at a time

// The two wire formats the load generator speaks. Everything the modes count ("my response",
// the "#<seq>#" or "#<ms>#" marks in payloads) reads the same in both.
const PROTOCOLS = {
  plainsocket: {
    path: (url) => url,
    emit: (event, data) => JSON.stringify({ event, namespace: NAMESPACE, data }),
  },
  socketio: {
    // Engine.IO 4 straight over a WebSocket: what socket.io-client does with transports: ["websocket"].
    path: (url) => {
      const target = new URL(url);
      target.pathname = "/socket.io/";
      target.search = "?EIO=4&transport=websocket";
      return target.toString();
    },
    emit: (event, data) => `42${NAMESPACE},${JSON.stringify([event, data])}`,
  },
};
let PROTOCOL = PROTOCOLS.plainsocket;
let EIO = false; // answer Engine.IO pings ("2") with pongs ("3")
let LOCAL_ADDRESSES = [];
let nextAddress = 0;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// Clients. Both kinds offer the same small interface:
//   conn.prepare(text) -> a value for conn.sendPrepared (frame once, send many times)
//   conn.send(text); conn.onframe = (buf, start, end) => {}  (one text message, bytes start..end)
//   conn.onclose = (code) => {}; conn.close() -> Promise (close handshake); conn.terminate()

// Frames that arrive before anyone listens (the greeting can share a TCP segment with the
// handshake response) wait in a queue until a handler is set.
class Conn {
  constructor() {
    this.queue = [];
    this.handler = (buf, start, end) => this.queue.push(Buffer.from(buf.subarray(start, end)));
    this.onclose = () => {};
    this.closed = false;
  }

  get onframe() {
    return this.handler;
  }

  set onframe(fn) {
    this.handler = fn;
    while (this.queue.length && this.handler === fn) {
      const buf = this.queue.shift();
      fn(buf, 0, buf.length);
    }
  }
}

// A minimal client: handshake, masked text frames out, unmasked frames in (RFC 6455 section 5).
class WireConn extends Conn {
  constructor(socket) {
    super();
    this.socket = socket;
    this.pending = null;
    this.closing = false;
    this.closeCode = 1006;
    socket.on("close", () => {
      this.closed = true;
      this.onclose(this.closeCode);
    });
  }

  static connect(url) {
    return new Promise((resolve, reject) => {
      const target = new URL(url);
      const key = crypto.randomBytes(16).toString("base64");
      const accept = crypto.createHash("sha1").update(key + GUID).digest("base64");
      let conn = null;
      let head = null;
      const fail = (err) => {
        socket.destroy();
        reject(err);
      };
      const onHandshake = (chunk) => {
        head = head ? Buffer.concat([head, chunk]) : Buffer.from(chunk);
        const end = head.indexOf("\r\n\r\n");
        if (end === -1) {
          if (head.length > 16384) fail(new Error("handshake response too long"));
          return;
        }
        socket.off("error", fail);
        const response = head.toString("latin1", 0, end);
        if (!/^HTTP\/1\.1 101 /.test(response) || !response.toLowerCase().includes(accept.toLowerCase())) {
          fail(new Error(`handshake refused: ${response.split("\r\n")[0]}`));
          return;
        }
        conn = new WireConn(socket);
        socket.on("error", () => {});
        resolve(conn);
        if (end + 4 < head.length) conn.receive(head, end + 4, head.length);
      };
      // `onread` hands each read to us in one reused buffer, skipping the stream machinery
      // (https://nodejs.org/api/net.html#socketconnectoptions-connectlistener): the cheapest way
      // for one Node process to take in a fan-out to thousands of sockets.
      const local = LOCAL_ADDRESSES.length ? { localAddress: LOCAL_ADDRESSES[nextAddress++ % LOCAL_ADDRESSES.length] } : {};
      const socket = net.connect({
        host: target.hostname,
        port: Number(target.port) || 80,
        noDelay: true,
        ...local,
        onread: {
          buffer: READ_BUFFER,
          callback: (nread, buf) => {
            if (conn) conn.receive(buf, 0, nread);
            else onHandshake(buf.subarray(0, nread));
          },
        },
      });
      socket.on("error", fail);
      socket.once("close", () => {
        if (!conn) reject(new Error("connection closed during the opening handshake"));
      });
      socket.write(
        `GET ${target.pathname}${target.search} HTTP/1.1\r\nHost: ${target.host}\r\n` +
          "Upgrade: websocket\r\nConnection: Upgrade\r\n" +
          `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
    });
  }

  // Client frames must be masked (RFC 6455 section 5.3). A load generator is no browser: one
  // random key per distinct message keeps the server's unmasking cost without ours.
  static frame(opcode, payload) {
    const length = payload.length;
    const header = length < 126 ? 2 : length < 65536 ? 4 : 10;
    const out = Buffer.allocUnsafe(header + 4 + length);
    out[0] = 0x80 | opcode;
    if (header === 2) {
      out[1] = 0x80 | length;
    } else if (header === 4) {
      out[1] = 0x80 | 126;
      out.writeUInt16BE(length, 2);
    } else {
      out[1] = 0x80 | 127;
      out.writeBigUInt64BE(BigInt(length), 2);
    }
    crypto.randomFillSync(out, header, 4);
    for (let i = 0; i < length; i++) out[header + 4 + i] = payload[i] ^ out[header + (i & 3)];
    return out;
  }

  prepare(text) {
    return WireConn.frame(0x1, Buffer.from(text));
  }

  sendPrepared(frame) {
    if (!this.closed) this.socket.write(frame);
  }

  send(text) {
    this.sendPrepared(this.prepare(text));
  }

  // Take in bytes from..to of buf, which the next read will overwrite: whatever must outlive
  // this call (a partial frame) is copied.
  receive(buf, from, to) {
    let pos = from;
    let length = to;
    if (this.pending) {
      buf = Buffer.concat([this.pending, buf.subarray(from, to)]);
      this.pending = null;
      pos = 0;
      length = buf.length;
    }
    while (length - pos >= 2) {
      const b0 = buf[pos];
      let size = buf[pos + 1] & 0x7f;
      let header = 2;
      if (size === 126) {
        if (length - pos < 4) break;
        size = buf.readUInt16BE(pos + 2);
        header = 4;
      } else if (size === 127) {
        if (length - pos < 10) break;
        size = Number(buf.readBigUInt64BE(pos + 2));
        header = 10;
      }
      if (length - pos < header + size) break;
      const start = pos + header;
      const end = start + size;
      pos = end;
      const opcode = b0 & 0x0f;
      if (opcode <= 0x2) {
        // A message is counted once, on its final fragment; servers here send whole frames.
        if (EIO && size === 1 && buf[start] === 0x32) this.sendPrepared(EIO_PONG);
        else if (b0 & 0x80) this.handler(buf, start, end);
      } else if (opcode === 0x8) {
        this.closeCode = size >= 2 ? buf.readUInt16BE(start) : 1005;
        if (!this.closing) this.socket.write(WireConn.frame(0x8, buf.subarray(start, Math.min(end, start + 2))));
        this.closing = true;
        this.socket.end();
      } else if (opcode === 0x9) {
        this.socket.write(WireConn.frame(0xa, buf.subarray(start, end)));
      }
    }
    if (pos < length) this.pending = Buffer.from(buf.subarray(pos, length));
  }

  close(timeoutMs = 5000) {
    if (this.closed) return Promise.resolve(true);
    return new Promise((resolve) => {
      let clean = true;
      const timer = setTimeout(() => {
        clean = false;
        this.socket.destroy();
      }, timeoutMs);
      this.socket.once("close", () => {
        clearTimeout(timer);
        resolve(clean);
      });
      if (!this.closing) {
        this.closing = true;
        this.socket.write(WireConn.frame(0x8, Buffer.from([0x03, 0xe8])));
      }
    });
  }

  terminate() {
    this.socket.destroy();
  }
}

const EIO_PONG = WireConn.frame(0x1, Buffer.from("3"));

// The same interface over the `ws` package.
class WsConn extends Conn {
  constructor(ws) {
    super();
    this.ws = ws;
    ws.on("message", (data) => {
      if (EIO && data.length === 1 && data[0] === 0x32) ws.send("3");
      else this.handler(data, 0, data.length);
    });
    ws.on("close", (code) => {
      this.closed = true;
      this.onclose(code);
    });
    ws.on("error", () => {});
  }

  static connect(url) {
    return new Promise((resolve, reject) => {
      const local = LOCAL_ADDRESSES.length ? { localAddress: LOCAL_ADDRESSES[nextAddress++ % LOCAL_ADDRESSES.length] } : {};
      const ws = new WebSocket(url, {
        ...local,
        perMessageDeflate: false,
        // The load generator trusts the server's UTF-8; checking it would only cost client CPU.
        skipUTF8Validation: true,
        handshakeTimeout: JOIN_TIMEOUT_MS,
      });
      ws.once("open", () => {
        ws.off("error", reject);
        resolve(new WsConn(ws));
      });
      ws.once("error", reject);
    });
  }

  prepare(text) {
    return text;
  }

  sendPrepared(text) {
    if (!this.closed) this.ws.send(text);
  }

  send(text) {
    this.sendPrepared(text);
  }

  close(timeoutMs = 5000) {
    if (this.closed) return Promise.resolve(true);
    return new Promise((resolve) => {
      let clean = true;
      const timer = setTimeout(() => {
        clean = false;
        this.ws.terminate();
      }, timeoutMs);
      this.ws.once("close", () => {
        clearTimeout(timer);
        resolve(clean);
      });
      this.ws.close(1000);
    });
  }

  terminate() {
    this.ws.terminate();
  }
}

const CLIENTS = { wire: WireConn, ws: WsConn };

// ---------------------------------------------------------------------------------------------
// Helpers

function parseArgs(argv) {
  const defaults = {
    url: "",
    mode: "",
    client: "wire",
    clients: 50,
    window: 16,
    senders: 1,
    size: 100,
    duration: 5,
    warmup: 1,
    rate: 20,
    total: 1000,
    concurrency: 50,
    "open-concurrency": 100,
    hold: 120,
    deadline: 300,
    protocol: "plainsocket",
    "local-address": "",
    "room-size": 10,
    "room-base": 0,
  };
  const args = { ...defaults };
  for (let i = 2; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    if (!(key in defaults) || i + 1 >= argv.length) throw new Error(`unknown or incomplete option ${argv[i]}`);
    const value = argv[i + 1];
    args[key] = typeof defaults[key] === "number" ? Number(value) : value;
    if (typeof defaults[key] === "number" && !Number.isFinite(args[key])) {
      throw new Error(`option ${argv[i]} needs a number, got ${value}`);
    }
  }
  if (!args.url || !args.mode) throw new Error("--url and --mode are required");
  if (!(args.client in CLIENTS)) throw new Error(`--client is one of ${Object.keys(CLIENTS).join(", ")}`);
  if (!(args.protocol in PROTOCOLS)) throw new Error(`--protocol is one of ${Object.keys(PROTOCOLS).join(", ")}`);
  return args;
}

function cpuMeter() {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  return () => {
    const cpu = process.cpuUsage(cpu0);
    const wallMs = performance.now() - t0;
    return { cpu: ((cpu.user + cpu.system) / 1000 / wallMs) * 100, wall: wallMs / 1000 };
  };
}

// Tell the driver when the measured window opens and closes, so it can read the server's CPU time.
function mark(phase) {
  process.stdout.write(JSON.stringify({ phase }) + "\n");
}

function percentile(sorted, q) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

function envelope(event, data) {
  return PROTOCOL.emit(event, { data });
}

function contains(buf, start, end, needle) {
  return buf.subarray(start, end).indexOf(needle) !== -1;
}

// Open one connection and complete the /test connect; resolves once "Connected" arrived.
async function join(Client, url) {
  return PROTOCOL === PROTOCOLS.socketio ? joinSocketio(Client, url) : joinPlain(Client, url);
}

// Socket.IO: Engine.IO's open packet, then "40/test," and the namespace's "40/test,{sid}".
async function joinSocketio(Client, url) {
  const t0 = performance.now();
  const conn = await Client.connect(PROTOCOL.path(url));
  return new Promise((resolve, reject) => {
    // python-socketio sends what the connect handler emits before the namespace's own "40"
    // answer, Node's socket.io after it: wait for both, in either order.
    let joined = false;
    let welcomed = false;
    const fail = (err) => {
      clearTimeout(timer);
      conn.terminate();
      reject(err);
    };
    const timer = setTimeout(() => fail(new Error("join timed out")), JOIN_TIMEOUT_MS);
    conn.onclose = (code) => fail(new Error(`closed with ${code} while joining`));
    conn.onframe = (buf, start, end) => {
      const text = buf.toString("utf8", start, end);
      if (text[0] === "0") {
        conn.send(`40${NAMESPACE},`);
        return;
      }
      if (text.startsWith(`40${NAMESPACE},`)) joined = true;
      else if (text.startsWith(`42${NAMESPACE},["my response"`)) welcomed = true;
      else {
        fail(new Error(`unexpected setup frame: ${text.slice(0, 200)}`));
        return;
      }
      if (joined && welcomed) {
        clearTimeout(timer);
        conn.onframe = () => {};
        conn.onclose = () => {};
        resolve({ conn, ms: performance.now() - t0 });
      }
    };
  });
}

async function joinPlain(Client, url) {
  const t0 = performance.now();
  const conn = await Client.connect(url);
  return new Promise((resolve, reject) => {
    let joined = false;
    const fail = (err) => {
      clearTimeout(timer);
      conn.terminate();
      reject(err);
    };
    const timer = setTimeout(() => fail(new Error("join timed out")), JOIN_TIMEOUT_MS);
    conn.onclose = (code) => fail(new Error(`closed with ${code} while joining`));
    conn.onframe = (buf, start, end) => {
      const text = buf.toString("utf8", start, end);
      let msg;
      try {
        msg = JSON.parse(text);
      } catch {
        fail(new Error(`setup frame is not JSON: ${text.slice(0, 200)}`));
        return;
      }
      if (msg.event === "connect" && msg.namespace === "/") {
        conn.send(JSON.stringify({ event: "connect", namespace: NAMESPACE }));
      } else if (msg.event === "connect" && msg.namespace === NAMESPACE) {
        joined = true;
      } else if (msg.event === "my response" && msg.namespace === NAMESPACE && joined) {
        clearTimeout(timer);
        conn.onframe = () => {};
        conn.onclose = () => {};
        resolve({ conn, ms: performance.now() - t0 });
      } else {
        fail(new Error(`unexpected setup frame: ${text.slice(0, 200)}`));
      }
    };
  });
}

async function joinMany(Client, url, n, concurrency) {
  const conns = new Array(n);
  let next = 0;
  async function worker() {
    while (next < n) {
      const i = next++;
      conns[i] = (await join(Client, url)).conn;
    }
  }
  await Promise.all(Array.from({ length: Math.min(n, concurrency) }, worker));
  return conns;
}

// Close every connection with a close handshake; returns how many had to be dropped instead.
async function closeAll(conns, timeoutMs = 5000) {
  const clean = await Promise.all(conns.filter((conn) => conn && !conn.closed).map((conn) => conn.close(timeoutMs)));
  return clean.filter((ok) => !ok).length;
}

// Count closes while measuring: a server that drops clients must not look fast.
function watchCloses(conns) {
  const state = { closes: 0, codes: {}, active: true };
  for (const conn of conns) {
    conn.onclose = (code) => {
      if (!state.active) return;
      state.closes++;
      state.codes[code] = (state.codes[code] || 0) + 1;
    };
  }
  return state;
}

function closeReport(state, dropped) {
  return { unexpected_closes: state.closes, close_codes: state.codes, dropped_on_close: dropped };
}

// ---------------------------------------------------------------------------------------------
// Modes

async function modeCheck(args) {
  const problems = [];
  const expect = (cond, what) => {
    if (!cond) problems.push(what);
  };
  const conn = await WsConn.connect(args.url);
  const inbox = [];
  const waiters = [];
  conn.onframe = (buf, start, end) => {
    const msg = JSON.parse(buf.toString("utf8", start, end));
    if (waiters.length) waiters.shift()(msg);
    else inbox.push(msg);
  };
  const nextFrame = () =>
    new Promise((resolve, reject) => {
      if (inbox.length) return resolve(inbox.shift());
      const timer = setTimeout(() => reject(new Error("no frame within 5 s")), 5000);
      waiters.push((msg) => {
        clearTimeout(timer);
        resolve(msg);
      });
    });
  const hello = await nextFrame();
  expect(hello.event === "connect" && hello.namespace === "/", `greeting ${JSON.stringify(hello)}`);
  expect(typeof hello.data?.sid === "string" && hello.data.sid.length > 0, "greeting has a sid");
  expect(hello.data?.protocol === 1, "greeting says protocol 1");
  conn.send(JSON.stringify({ event: "connect", namespace: NAMESPACE }));
  const joined = await nextFrame();
  expect(
    joined.event === "connect" && joined.namespace === NAMESPACE && joined.data?.sid === hello.data?.sid,
    `join answer ${JSON.stringify(joined)}`,
  );
  const welcome = await nextFrame();
  expect(welcome.event === "my response" && welcome.data?.data === "Connected", `welcome ${JSON.stringify(welcome)}`);
  // Echo goes to the sender only; a broadcast reaches all of /test, the sender included. The
  // two bystanders use the load generator's own client, which this also checks.
  const others = await joinMany(WireConn, args.url, 2, 2);
  const boxes = others.map((other) => {
    const box = [];
    other.onframe = (buf, start, end) => box.push(JSON.parse(buf.toString("utf8", start, end)));
    return box;
  });
  const echoData = `echo-${Math.random()}`;
  conn.send(envelope("my event", echoData));
  const echoed = await nextFrame();
  expect(
    echoed.event === "my response" && echoed.namespace === NAMESPACE && echoed.data?.data === echoData,
    `echo answer ${JSON.stringify(echoed)}`,
  );
  const castData = { text: `cast-${Math.random()}`, pad: "y".repeat(10240) };
  conn.send(envelope("my broadcast event", castData));
  const own = await nextFrame();
  expect(own.event === "my response" && own.data?.data?.text === castData.text, `own copy ${JSON.stringify(own).slice(0, 200)}`);
  await sleep(300);
  boxes.forEach((box, i) => {
    expect(
      box.length === 1 && box[0].event === "my response" && box[0].data?.data?.pad === castData.pad,
      `bystander ${i + 1} got ${JSON.stringify(box).slice(0, 200)} instead of exactly the broadcast`,
    );
  });
  await closeAll([conn, ...others]);
  return { ok: problems.length === 0, problems };
}

// Socket.IO's check: socket.io-client itself completes the /test connect and sees its echo; two
// of our own clients must each get exactly the broadcast, which also checks our Socket.IO client.
async function modeCheckSocketio(args) {
  const { io } = require("socket.io-client");
  const problems = [];
  const expect = (cond, what) => {
    if (!cond) problems.push(what);
  };
  const base = new URL(args.url);
  const socket = io(`http://${base.host}${NAMESPACE}`, { transports: ["websocket"], reconnection: false });
  const inbox = [];
  const waiters = [];
  socket.on("my response", (msg) => {
    if (waiters.length) waiters.shift()(msg);
    else inbox.push(msg);
  });
  const next = () =>
    new Promise((resolve, reject) => {
      if (inbox.length) return resolve(inbox.shift());
      const timer = setTimeout(() => reject(new Error("no frame within 5 s")), 5000);
      waiters.push((msg) => {
        clearTimeout(timer);
        resolve(msg);
      });
    });
  const welcome = await next();
  expect(welcome?.data === "Connected", `welcome ${JSON.stringify(welcome)}`);
  const others = await joinMany(WireConn, args.url, 2, 2);
  const boxes = others.map((other) => {
    const box = [];
    other.onframe = (buf, start, end) => box.push(buf.toString("utf8", start, end));
    return box;
  });
  const echoData = `echo-${Math.random()}`;
  socket.emit("my event", { data: echoData });
  const echoed = await next();
  expect(echoed?.data === echoData, `echo answer ${JSON.stringify(echoed)}`);
  const castData = `cast-${Math.random()}`;
  socket.emit("my broadcast event", { data: castData });
  const own = await next();
  expect(own?.data === castData, `own copy ${JSON.stringify(own)}`);
  await sleep(300);
  const wanted = PROTOCOL.emit("my response", { data: castData });
  boxes.forEach((box, i) => {
    expect(box.length === 1 && box[0] === wanted, `bystander ${i + 1} got ${JSON.stringify(box).slice(0, 200)}`);
  });
  socket.close();
  await closeAll(others);
  return { ok: problems.length === 0, problems };
}

// Open n connections, at most `concurrency` at a time, carrying on past failures (counted).
async function joinTolerant(Client, url, n, concurrency) {
  const conns = [];
  const errors = {};
  let failed = 0;
  let next = 0;
  async function worker() {
    while (next < n) {
      next++;
      try {
        conns.push((await join(Client, url)).conn);
      } catch (err) {
        failed++;
        errors[err.message] = (errors[err.message] || 0) + 1;
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(n, concurrency) }, worker));
  return { conns, failed, errors };
}

function readLines(onLine) {
  let rest = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => {
    rest += chunk;
    let at;
    while ((at = rest.indexOf("\n")) !== -1) {
      const line = rest.slice(0, at).trim();
      rest = rest.slice(at + 1);
      onLine(line);
    }
  });
}

function waitLine(expected) {
  return new Promise((resolve) => {
    const lines = [];
    readLines((line) => {
      lines.push(line);
      if (line === expected) resolve();
    });
    process.stdin.once("end", resolve);
  });
}

// Read "#<ms>#" (a float, the emit time on this process's clock) from a frame; NaN without it.
function stampOf(buf, start, end) {
  const at = buf.indexOf(0x23, start);
  if (at === -1 || at >= end) return NaN;
  let value = 0;
  let scale = 0;
  for (let i = at + 1; i < end; i++) {
    const c = buf[i];
    if (c === 0x23) return scale ? value / scale : value;
    if (c === 0x2e) scale = 1;
    else {
      value = value * 10 + (c - 48);
      if (scale) scale *= 10;
    }
  }
  return NaN;
}

const BIN_MS = 0.01;
const BINS = 200000; // up to 2 s in 0.01 ms bins; later deliveries are counted as overflow

async function modeChat(args, Client) {
  const meter0 = cpuMeter();
  const conns = await joinMany(Client, args.url, args.clients, args["open-concurrency"]);
  const roomSize = args["room-size"];
  const roomOf = (i) => `r${args["room-base"] + Math.floor(i / roomSize)}`;
  // Join each client's room and wait for each answer.
  await Promise.all(
    conns.map(
      (conn, i) =>
        new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error("room join timed out")), JOIN_TIMEOUT_MS);
          conn.onframe = () => {
            clearTimeout(timer);
            resolve();
          };
          conn.send(PROTOCOL.emit("join", { room: roomOf(i) }));
        }),
    ),
  );
  const open = meter0();
  const closes = watchCloses(conns);
  const hist = new Uint32Array(BINS);
  let overflow = 0;
  let maxMs = 0;
  let windowStart = Infinity;
  let windowEnd = Infinity;
  let sentInWindow = 0;
  let gotInWindow = 0;
  let received = 0;
  let bad = 0;
  const onframe = (buf, start, end) => {
    const now = performance.now();
    const t = stampOf(buf, start, end);
    if (Number.isNaN(t)) {
      bad++;
      return;
    }
    received++;
    if (t >= windowStart && t < windowEnd) {
      gotInWindow++;
      const ms = now - t;
      if (ms > maxMs) maxMs = ms;
      const bin = Math.floor(ms / BIN_MS);
      if (bin < BINS) hist[bin]++;
      else overflow++;
    }
  };
  for (const conn of conns) conn.onframe = onframe;
  process.stdout.write(JSON.stringify({ phase: "ready", clients: conns.length, open_s: open.wall }) + "\n");
  await waitLine("go");
  // Client i sends at t0 + (i / clients + k) / rate: evenly spread, --rate per second each.
  const pad = "x".repeat(args.size);
  const period = 1000 / args.rate;
  const t0 = performance.now();
  const stopAt = t0 + (args.warmup + args.duration) * 1000;
  windowStart = t0 + args.warmup * 1000;
  windowEnd = stopAt;
  const due = Float64Array.from(conns, (_, i) => t0 + (period * i) / conns.length);
  let meter = null;
  let sent = 0;
  let cursor = 0;
  while (performance.now() < stopAt) {
    const now = performance.now();
    if (!meter && now >= windowStart) {
      mark("measure");
      meter = cpuMeter();
    }
    // Clients are due in index order, round after round: walk from where the last tick stopped.
    for (let n = 0; n < conns.length && due[cursor] <= now; n++) {
      const t = performance.now();
      conns[cursor].send(PROTOCOL.emit("my room event", { data: `#${t.toFixed(3)}#${pad}`, room: roomOf(cursor) }));
      if (t >= windowStart && t < windowEnd) sentInWindow++;
      sent++;
      due[cursor] += period;
      cursor = (cursor + 1) % conns.length;
    }
    await sleep(2);
  }
  const { cpu, wall } = meter ? meter() : { cpu: null, wall: 0 };
  mark("measured");
  // Every member of the room gets each message, its sender included.
  const expected = sentInWindow * roomSize;
  const giveUp = performance.now() + 5000;
  while (gotInWindow < expected && performance.now() < giveUp) await sleep(20);
  closes.active = false;
  const dropped = await closeAll(conns);
  const bins = [];
  for (let i = 0; i < BINS; i++) if (hist[i]) bins.push([i, hist[i]]);
  return {
    clients: conns.length,
    open_s: open.wall,
    sent,
    sent_in_window: sentInWindow,
    expected,
    received_in_window: gotInWindow,
    received,
    lost: expected - gotInWindow,
    bad,
    bin_ms: BIN_MS,
    bins,
    overflow,
    max: maxMs,
    wall,
    cpu,
    ...closeReport(closes, dropped),
  };
}

async function modeCrowd(args, Client) {
  const meter = cpuMeter();
  const { conns, failed, errors } = await joinTolerant(Client, args.url, args.clients, args["open-concurrency"]);
  const open = meter();
  const closes = watchCloses(conns);
  const copies = new Uint8Array(conns.length);
  const tag = Buffer.from("#crowd#");
  let got = 0;
  let bad = 0;
  let sentAt = 0;
  let doneMs = null;
  conns.forEach((conn, i) => {
    conn.onframe = (buf, start, end) => {
      if (buf.subarray(start, end).indexOf(tag) === -1) {
        bad++;
        return;
      }
      if (copies[i] < 255) copies[i]++;
      if (copies[i] === 1 && ++got === conns.length) {
        doneMs = sentAt ? performance.now() - sentAt : null;
        process.stdout.write(JSON.stringify({ phase: "delivered", ms: doneMs }) + "\n");
      }
    };
  });
  const rss = process.memoryUsage().rss;
  process.stdout.write(
    JSON.stringify({ phase: "ready", clients: conns.length, failed, open_s: open.wall, loadgen_rss_kib: rss / 1024 }) + "\n",
  );
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, args.hold * 1000);
    readLines((line) => {
      if (line === "send" && conns.length) {
        sentAt = performance.now();
        conns[0].send(envelope("my broadcast event", "#crowd#"));
      } else if (line === "close") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  let once = 0;
  let missing = 0;
  let duplicated = 0;
  for (const n of copies) {
    if (n === 1) once++;
    else if (n === 0) missing++;
    else duplicated++;
  }
  closes.active = false;
  const closeStart = performance.now();
  const dropped = await closeAll(conns, 20000);
  return {
    clients: conns.length,
    failed,
    errors,
    open_s: open.wall,
    open_cpu: open.cpu,
    once,
    missing,
    duplicated,
    bad,
    delivered_ms: doneMs,
    close_s: (performance.now() - closeStart) / 1000,
    ...closeReport(closes, dropped),
  };
}

async function modeEcho(args, Client) {
  const conns = await joinMany(Client, args.url, args.clients, args["open-concurrency"]);
  const closes = watchCloses(conns);
  let measuring = false;
  let sending = true;
  let responses = 0;
  let bad = 0;
  for (const conn of conns) {
    const message = conn.prepare(envelope("my event", "x".repeat(args.size)));
    conn.onframe = (buf, start, end) => {
      if (measuring) {
        if (contains(buf, start, end, MY_RESPONSE)) responses++;
        else bad++;
      }
      if (sending) conn.sendPrepared(message);
    };
    for (let i = 0; i < args.window; i++) conn.sendPrepared(message);
  }
  await sleep(args.warmup * 1000);
  mark("measure");
  const meter = cpuMeter();
  measuring = true;
  await sleep(args.duration * 1000);
  measuring = false;
  const { cpu, wall } = meter();
  mark("measured");
  sending = false;
  closes.active = false;
  const dropped = await closeAll(conns);
  return { rate: responses / wall, responses, bad, wall, cpu, ...closeReport(closes, dropped) };
}

async function modeFanout(args, Client) {
  const conns = await joinMany(Client, args.url, args.clients, args["open-concurrency"]);
  const senders = Math.min(args.senders, conns.length);
  const closes = watchCloses(conns);
  let measuring = false;
  let sending = true;
  let deliveries = 0;
  let bad = 0;
  let broadcasts = 0;
  let stalls = 0;
  const guards = [];
  // Bystanders only ever receive broadcasts, so counting frames is enough.
  for (let i = senders; i < conns.length; i++) {
    conns[i].onframe = () => {
      if (measuring) deliveries++;
    };
  }
  for (let s = 0; s < senders; s++) {
    const conn = conns[s];
    const tag = Buffer.from(`~s${s}~`);
    const message = conn.prepare(envelope("my broadcast event", `~s${s}~${"x".repeat(args.size)}`));
    let inflight = 0;
    let lastOwn = performance.now();
    const fill = () => {
      while (sending && inflight < args.window) {
        inflight++;
        conn.sendPrepared(message);
      }
    };
    conn.onframe = (buf, start, end) => {
      const frame = buf.subarray(start, end);
      const delivery = frame.indexOf(MY_RESPONSE) !== -1;
      const own = delivery && frame.indexOf(tag) !== -1;
      if (measuring) {
        if (delivery) deliveries++;
        else bad++;
        if (own) broadcasts++;
      }
      // Anything but a broadcast (an error, say) answers one of ours too: it leaves the window.
      if (own || !delivery) {
        inflight--;
        lastOwn = performance.now();
        fill();
      }
    };
    // A server that drops a broadcast (a limit, say) would stall the window for good: reopen it.
    guards.push(
      setInterval(() => {
        if (sending && inflight > 0 && performance.now() - lastOwn > 2000) {
          stalls++;
          inflight = 0;
          lastOwn = performance.now();
          fill();
        }
      }, 500),
    );
    fill();
  }
  await sleep(args.warmup * 1000);
  mark("measure");
  const meter = cpuMeter();
  measuring = true;
  await sleep(args.duration * 1000);
  measuring = false;
  const { cpu, wall } = meter();
  mark("measured");
  sending = false;
  guards.forEach(clearInterval);
  closes.active = false;
  const dropped = await closeAll(conns);
  return {
    rate: deliveries / wall,
    deliveries,
    broadcasts_per_s: broadcasts / wall,
    bad,
    stalls,
    wall,
    cpu,
    ...closeReport(closes, dropped),
  };
}

async function modeLatency(args, Client) {
  const conns = await joinMany(Client, args.url, args.clients, args["open-concurrency"]);
  const closes = watchCloses(conns);
  const period = 1000 / args.rate;
  const planned = Math.ceil((args.warmup + args.duration) * args.rate);
  const firstMeasured = Math.ceil(args.warmup * args.rate);
  const sentAt = new Float64Array(planned);
  const samples = new Float64Array((planned - firstMeasured) * conns.length);
  let count = 0;
  let bad = 0;
  let received = 0;
  const pad = "x".repeat(args.size);
  // The payload starts with "#<seq>#", so a receiver finds the sequence number without JSON.
  const onframe = (buf, start, end) => {
    const now = performance.now();
    const at = buf.indexOf(0x23, start);
    if (at === -1 || at >= end) {
      bad++;
      return;
    }
    let seq = 0;
    for (let i = at + 1; i < end && buf[i] !== 0x23; i++) seq = seq * 10 + (buf[i] - 48);
    received++;
    if (seq >= firstMeasured && seq < planned && count < samples.length) samples[count++] = now - sentAt[seq];
  };
  for (const conn of conns) conn.onframe = onframe;
  const sender = conns[0];
  const t0 = performance.now();
  let meter = null;
  for (let seq = 0; seq < planned; seq++) {
    const wait = t0 + seq * period - performance.now();
    if (wait > 0) await sleep(wait);
    if (seq === firstMeasured) {
      mark("measure");
      meter = cpuMeter();
    }
    sentAt[seq] = performance.now();
    sender.send(envelope("my broadcast event", `#${seq}#${pad}`));
  }
  // Give the last broadcasts time to arrive before counting what was lost.
  const expected = planned * conns.length;
  const giveUp = performance.now() + 3000;
  while (received < expected && performance.now() < giveUp) await sleep(20);
  const { cpu, wall } = meter ? meter() : { cpu: null, wall: 0 };
  mark("measured");
  closes.active = false;
  const sorted = samples.subarray(0, count).sort();
  const dropped = await closeAll(conns);
  return {
    min: count ? sorted[0] : null,
    p50: percentile(sorted, 0.5),
    p90: percentile(sorted, 0.9),
    p99: percentile(sorted, 0.99),
    max: count ? sorted[count - 1] : null,
    samples: count,
    expected_samples: samples.length,
    lost: expected - received,
    bad,
    wall,
    cpu,
    ...closeReport(closes, dropped),
  };
}

async function modeConnects(args, Client) {
  mark("measure");
  const meter = cpuMeter();
  const stopAt = performance.now() + args.duration * 1000;
  const joinMs = [];
  let started = 0;
  let done = 0;
  let failed = 0;
  const errors = {};
  async function worker() {
    while (started < args.total && performance.now() < stopAt) {
      started++;
      try {
        const { conn, ms } = await join(Client, args.url);
        joinMs.push(ms);
        await conn.close();
        done++;
      } catch (err) {
        failed++;
        errors[err.message] = (errors[err.message] || 0) + 1;
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(args.concurrency, args.total) }, worker));
  const { cpu, wall } = meter();
  mark("measured");
  joinMs.sort((a, b) => a - b);
  return {
    rate: done / wall,
    done,
    failed,
    errors,
    join_p50: percentile(joinMs, 0.5),
    join_p99: percentile(joinMs, 0.99),
    wall,
    cpu,
  };
}

async function modeIdle(args, Client) {
  const meter = cpuMeter();
  const conns = await joinMany(Client, args.url, args.clients, args["open-concurrency"]);
  const { cpu, wall } = meter();
  const closes = watchCloses(conns);
  process.stdout.write(JSON.stringify({ phase: "ready", clients: conns.length, open_s: wall }) + "\n");
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, args.hold * 1000);
    const done = () => {
      clearTimeout(timer);
      resolve();
    };
    process.stdin.once("data", done);
    process.stdin.once("end", done);
  });
  process.stdin.pause();
  closes.active = false;
  const dropped = await closeAll(conns);
  return { clients: conns.length, open_s: wall, cpu, ...closeReport(closes, dropped) };
}

const MODES = {
  check: (args) => (PROTOCOL === PROTOCOLS.socketio ? modeCheckSocketio(args) : modeCheck(args)),
  chat: modeChat,
  crowd: modeCrowd,
  echo: modeEcho,
  fanout: modeFanout,
  latency: modeLatency,
  connects: modeConnects,
  idle: modeIdle,
};

async function main() {
  const args = parseArgs(process.argv);
  const mode = MODES[args.mode];
  if (!mode) throw new Error(`unknown mode ${args.mode}; one of ${Object.keys(MODES).join(", ")}`);
  PROTOCOL = PROTOCOLS[args.protocol];
  EIO = args.protocol === "socketio";
  LOCAL_ADDRESSES = args["local-address"] ? args["local-address"].split(",") : [];
  setTimeout(() => {
    process.stderr.write(`loadgen: gave up after --deadline ${args.deadline} s\n`);
    process.exit(3);
  }, args.deadline * 1000).unref();
  const result = await mode(args, CLIENTS[args.client]);
  const out = { mode: args.mode, client: args.client, protocol: args.protocol, node: process.version, ...result };
  // A pipe takes a long line asynchronously: exit once it is written, not before.
  process.stdout.write(JSON.stringify(out) + "\n", () => process.exit(out.ok === false ? 1 : 0));
}

main().catch((err) => {
  process.stderr.write(`loadgen: ${err.stack || err}\n`);
  process.exit(2);
});
