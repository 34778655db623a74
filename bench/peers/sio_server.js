#!/usr/bin/env node
// The demo app's benchmark behaviour on Node's socket.io, as a peer for bench/run.py: namespace
// /test, "my event" answers the sender with "my response", "my broadcast event" sends it to all
// of /test, "join" enters a room and answers, "my room event" sends "my response" to the room
// (the sender included). socket.io's defaults otherwise. Prints
// "listening on http://127.0.0.1:<port>" on stderr once it listens.
//
//   node bench/peers/sio_server.js [--port 0] [--host 127.0.0.1]
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

function option(name, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  return at !== -1 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

const host = option("host", "127.0.0.1");
const port = Number(option("port", "5000"));
const field = (message, name) => (message && typeof message === "object" ? message[name] : undefined);

const httpServer = http.createServer();
const io = new Server(httpServer, { serveClient: false });
const test = io.of("/test");
test.on("connection", (socket) => {
  socket.emit("my response", { data: "Connected" });
  socket.on("my event", (message) => socket.emit("my response", { data: field(message, "data") }));
  socket.on("my broadcast event", (message) => test.emit("my response", { data: field(message, "data") }));
  socket.on("join", (message) => {
    socket.join(String(field(message, "room")));
    socket.emit("my response", { data: "In rooms" });
  });
  socket.on("my room event", (message) =>
    test.to(String(field(message, "room"))).emit("my response", { data: field(message, "data") }),
  );
});

httpServer.listen(port, host, 2048, () => {
  process.stderr.write(`socket.io listening on http://${host}:${httpServer.address().port}\n`);
});
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    io.close();
    process.exit(0);
  });
}
