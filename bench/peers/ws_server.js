#!/usr/bin/env node
// The demo app's benchmark behaviour on Node's `ws`, speaking plainsocket's wire format
// (docs/protocol.md) with no validation or limits, like bench/baseline.py does on Python: the
// fastest thing this protocol can be served with from one core of Node. Prints
// "listening on http://127.0.0.1:<port>" on stderr once it listens.
//
//   node bench/peers/ws_server.js [--port 0] [--host 127.0.0.1]
"use strict";

const crypto = require("node:crypto");
const { WebSocketServer, WebSocket } = require("ws");

const NAMESPACE = "/test";
const PING_INTERVAL_MS = 25000; // the same keepalive as plainsocket and the baseline

function option(name, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  return at !== -1 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

const encode = (event, data) => JSON.stringify({ event, namespace: NAMESPACE, data });
const field = (message, name) => (message && typeof message === "object" ? message[name] : undefined);
const members = new Set();
const rooms = new Map();

function toAll(targets, text) {
  for (const ws of targets) if (ws.readyState === WebSocket.OPEN) ws.send(text);
}

const wss = new WebSocketServer({ host: option("host", "127.0.0.1"), port: Number(option("port", "8765")), perMessageDeflate: false, backlog: 2048 });
wss.on("listening", () => {
  process.stderr.write(`Node ws listening on http://${wss.options.host}:${wss.address().port}\n`);
});
wss.on("connection", (ws) => {
  const sid = crypto.randomBytes(16).toString("base64url");
  const joined = new Set();
  ws.alive = true;
  ws.on("pong", () => (ws.alive = true));
  ws.send(JSON.stringify({ event: "connect", namespace: "/", data: { sid, protocol: 1 } }));
  ws.on("message", (raw) => {
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    if (!frame || frame.namespace !== NAMESPACE) return;
    switch (frame.event) {
      case "my event":
        ws.send(encode("my response", frame.data));
        break;
      case "my broadcast event":
        toAll(members, encode("my response", frame.data));
        break;
      case "connect":
        members.add(ws);
        ws.send(encode("connect", { sid }));
        ws.send(encode("my response", { data: "Connected" }));
        break;
      case "join": {
        const room = String(field(frame.data, "room"));
        if (!rooms.has(room)) rooms.set(room, new Set());
        rooms.get(room).add(ws);
        joined.add(room);
        ws.send(encode("my response", { data: "In rooms" }));
        break;
      }
      case "my room event":
        toAll(rooms.get(String(field(frame.data, "room"))) || [], encode("my response", { data: field(frame.data, "data") }));
        break;
      case "disconnect":
        members.delete(ws);
        break;
    }
  });
  ws.on("close", () => {
    members.delete(ws);
    for (const room of joined) {
      const set = rooms.get(room);
      set.delete(ws);
      if (set.size === 0) rooms.delete(room);
    }
  });
});

const pinger = setInterval(() => {
  for (const ws of wss.clients) {
    if (!ws.alive) ws.terminate();
    else {
      ws.alive = false;
      ws.ping();
    }
  }
}, PING_INTERVAL_MS);
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    clearInterval(pinger);
    process.exit(0);
  });
}
