// Benchmark peers: `node server.js socketio` (socket.io rooms) or `node server.js ws` (ws,
// a loop of send over a room's members). Prints "PORT <n>" once listening on 127.0.0.1.
// Both speak the benchmark's minimal room protocol: subscribers join rooms, the publisher's
// messages name a room and are sent to each of its members.
"use strict";

const http = require("http");

const kind = process.argv[2];

function ready(port) {
  process.stdout.write(`PORT ${port}\n`);
  // The driver holds our stdin: when it goes away, however it ends, so does this server.
  process.stdin.on("end", () => process.exit(0));
  process.stdin.on("close", () => process.exit(0));
  process.stdin.resume();
}

if (kind === "socketio") {
  const { Server } = require("socket.io");
  const server = http.createServer();
  const io = new Server(server, {
    transports: ["websocket"],
    perMessageDeflate: false,
    serveClient: false,
    // Heartbeats cost per connection per interval, not per delivery: none while measuring.
    pingInterval: 3600000,
    pingTimeout: 3600000,
  });
  io.on("connection", (socket) => {
    socket.on("sub", (room, ack) => {
      socket.join(room);
      if (typeof ack === "function") ack("ok");
    });
    socket.on("pub", (room, data) => {
      io.to(room).emit("ev", data);
    });
  });
  server.listen(0, "127.0.0.1", () => ready(server.address().port));
} else if (kind === "ws") {
  const { WebSocketServer } = require("ws");
  const rooms = new Map();
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, perMessageDeflate: false });
  wss.on("connection", (ws) => {
    const joined = [];
    ws.on("message", (data) => {
      const text = data.toString();
      if (text.startsWith("sub ")) {
        const room = text.slice(4);
        if (!rooms.has(room)) rooms.set(room, new Set());
        rooms.get(room).add(ws);
        joined.push(room);
        ws.send("ok");
        return;
      }
      // "R<room>\n<frame>": the frame goes to every member, encoded once.
      const newline = text.indexOf("\n");
      const members = rooms.get(text.slice(1, newline));
      if (!members) return;
      const frame = Buffer.from(text.slice(newline + 1));
      for (const member of members) member.send(frame, { binary: false });
    });
    ws.on("close", () => {
      for (const room of joined) rooms.get(room)?.delete(ws);
    });
  });
  wss.on("listening", () => ready(wss.address().port));
} else {
  process.stderr.write("usage: node server.js socketio|ws\n");
  process.exit(2);
}
