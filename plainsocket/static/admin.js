/**
 * The admin page: a plainsocket client of the server's `/admin` namespace (plainsocket/admin.py).
 *
 * The server pushes `cluster` (every node's summary) each heartbeat interval while this page
 * is connected; rates and the charts of the last minutes are computed here, from the
 * counters' differences. Details of one sid or one room are asked for with an ack.
 *
 * Everything that comes from the server is put in the page as text (`textContent`), never as
 * HTML: room names, sids and addresses are chosen by clients.
 */

import { connect } from '/client.js';

const HISTORY = 150; // points kept for the charts: 5 minutes at the default 2 s interval
const TOKEN_KEY = 'plainsocket-admin-token';

const $ = (id) => document.getElementById(id);
let socket = null;
let admin = null;
let writeAllowed = false;
const previous = new Map(); // node -> its last summary, for rates
const history = []; // {connections, eventsIn, framesOut}

/** Build an element; string children become text nodes (never parsed as HTML). */
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === 'class') node.className = value;
    else if (name === 'onclick') node.addEventListener('click', value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

const cell = (text, kind = '') => el('td', kind ? { class: kind } : {}, text);
const number = (value, digits = 0) =>
  value === null || value === undefined || Number.isNaN(value) ? '-' : Number(value).toLocaleString('en', { maximumFractionDigits: digits });

function bytes(value) {
  if (value === null || value === undefined) return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return '-';
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

const ms = (seconds) => (seconds === null || seconds === undefined ? '-' : `${(seconds * 1000).toFixed(1)} ms`);

function setRows(tableId, rows) {
  const body = $(tableId).querySelector('tbody');
  body.replaceChildren(...rows);
}

// -- Logging in --------------------------------------------------------------------------

function start(token) {
  $('login-error').textContent = '';
  $('status').textContent = 'connecting…';
  socket = connect(`${location.origin}/`, { reconnect: true });
  admin = socket.of('/admin', { auth: { token } });
  admin.on('cluster', show);
  admin.on('disconnect', (reason) => {
    $('status').textContent = `disconnected (${reason}), reconnecting…`;
  });
  admin.on('connect', () => {
    $('status').textContent = 'connected';
  });
  admin.ready.then(
    () => {
      sessionStorage.setItem(TOKEN_KEY, token);
      $('login').hidden = true;
      $('dashboard').hidden = false;
      $('logout').hidden = false;
    },
    (error) => {
      sessionStorage.removeItem(TOKEN_KEY);
      socket.close();
      socket = admin = null;
      $('status').textContent = 'not connected';
      $('login-error').textContent = `Refused: ${error.message}`;
      $('login').hidden = false;
      $('dashboard').hidden = true;
    },
  );
}

$('login').addEventListener('submit', (event) => {
  event.preventDefault();
  start($('token').value);
});

$('logout').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  socket?.close();
  location.reload();
});

// -- What the server pushes ------------------------------------------------------------

function rate(node, field) {
  const before = previous.get(node.node);
  if (!before || node.time <= before.time || node[field] === undefined || node[field] < before[field]) return null;
  return (node[field] - before[field]) / (node.time - before.time);
}

function show(view) {
  writeAllowed = view.write === true;
  $('mode').textContent = writeAllowed ? 'read-write' : 'read-only';
  const banner = $('banner');
  if (view.backplane === 'down') {
    banner.textContent = 'The Redis backplane is down: showing this node only.';
    banner.hidden = false;
  } else {
    banner.hidden = true;
  }
  const local = view.nodes.find((node) => node.node === view.node) ?? view.nodes[0];
  const now = local ? local.time : Date.now() / 1000;
  const totals = { connections: 0, eventsIn: 0, framesOut: 0, bytesIn: 0, bytesOut: 0, up: 0 };
  const rows = [];
  for (const node of view.nodes) {
    const stale = now - node.time > 2.5 * (node.interval || view.interval);
    const rates = {
      eventsIn: rate(node, 'events_in'),
      framesOut: rate(node, 'frames_out'),
      bytesIn: rate(node, 'bytes_in'),
      bytesOut: rate(node, 'bytes_out'),
    };
    if (!stale) {
      totals.up += 1;
      totals.connections += node.connections;
      for (const key of ['eventsIn', 'framesOut', 'bytesIn', 'bytesOut']) totals[key] += rates[key] ?? 0;
    }
    previous.set(node.node, node);
    const redis = node.backplane;
    const link = redis === null ? 'off' : redis.up ? 'up' : 'down';
    const row = el(
      'tr',
      { class: stale ? 'stale' : '', 'data-node': node.node },
      cell(node.node + (node.node === view.node ? ' (this node)' : ''), 'node'),
      cell(node.host),
      cell(node.pid, 'number'),
      cell(node.worker ?? '-', 'number'),
      cell(duration(node.time - node.started)),
      cell(number(node.connections), 'number connections'),
      cell(number(rates.eventsIn, 1), 'number'),
      cell(number(rates.framesOut, 1), 'number'),
      cell(link, link === 'down' ? 'bad' : link === 'up' ? 'good' : ''),
      cell(ms(redis?.roundtrip), 'number'),
      cell(redis ? `${redis.lost} / ${redis.missed}` : '-', redis && redis.lost + redis.missed ? 'bad' : ''),
      cell(ms(node.loop_lag), 'number'),
      cell(bytes(node.rss), 'number'),
      cell(stale ? `stale (${duration(now - node.time)} ago)` : 'ok', stale ? 'bad' : 'good'),
    );
    rows.push(row);
  }
  setRows('nodes', rows);
  $('nodes-up').textContent = number(totals.up);
  $('connections').textContent = number(totals.connections);
  $('events-in').textContent = number(totals.eventsIn, 1);
  $('frames-out').textContent = number(totals.framesOut, 1);
  $('bytes-in').textContent = bytes(totals.bytesIn);
  $('bytes-out').textContent = bytes(totals.bytesOut);
  showNamespaces(view.nodes);
  showTroubles(view.nodes);
  showRooms(view.nodes);
  history.push({ connections: totals.connections, eventsIn: totals.eventsIn, framesOut: totals.framesOut });
  if (history.length > HISTORY) history.shift();
  chart($('chart-connections'), [history.map((point) => point.connections)], ['#2a62c9']);
  chart($('chart-events'), [history.map((p) => p.eventsIn), history.map((p) => p.framesOut)], ['#2a62c9', '#e07b00']);
}

function showNamespaces(nodes) {
  const sums = new Map();
  for (const node of nodes) {
    for (const [namespace, count] of Object.entries(node.namespaces ?? {})) {
      const entry = sums.get(namespace) ?? { connections: 0, rooms: 0 };
      entry.connections += count;
      entry.rooms += node.rooms?.[namespace]?.total ?? 0;
      sums.set(namespace, entry);
    }
  }
  setRows(
    'namespaces',
    [...sums.entries()].sort().map(([namespace, entry]) =>
      el('tr', {}, cell(namespace, 'name'), cell(number(entry.connections), 'number'), cell(number(entry.rooms), 'number')),
    ),
  );
  const select = $('room-namespace');
  const chosen = select.value;
  select.replaceChildren(...[...sums.keys()].sort().map((namespace) => el('option', { value: namespace }, namespace)));
  if (chosen && sums.has(chosen)) select.value = chosen;
}

function showTroubles(nodes) {
  const sums = new Map();
  const add = (what, count) => sums.set(what, (sums.get(what) ?? 0) + (count ?? 0));
  for (const node of nodes) {
    add('closed: slow consumer', node.closed?.slow_consumer);
    add('closed: rate limited', node.closed?.rate_limited);
    add('closed: too many connections', node.closed?.too_many_connections);
    add('closed: ping timeout', node.closed?.ping_timeout);
    for (const [reason, count] of Object.entries(node.refused ?? {})) add(`refused: ${reason}`, count);
    add('handler errors', node.handler_errors);
  }
  setRows(
    'troubles',
    [...sums.entries()].map(([what, count]) => el('tr', {}, cell(what), cell(number(count), count ? 'number bad' : 'number'))),
  );
}

function showRooms(nodes) {
  // Each node sends its own largest rooms; a room spread over nodes is summed here.
  const sums = new Map();
  for (const node of nodes) {
    for (const [namespace, rooms] of Object.entries(node.rooms ?? {})) {
      for (const [room, size] of rooms.largest) {
        const key = JSON.stringify([namespace, room]);
        sums.set(key, (sums.get(key) ?? 0) + size);
      }
    }
  }
  const rows = [...sums.entries()]
    .map(([key, size]) => [...JSON.parse(key), size])
    .sort((a, b) => a[0].localeCompare(b[0]) || b[2] - a[2])
    .map(([namespace, room, size]) => el('tr', {}, cell(namespace, 'name'), cell(room, 'name room'), cell(number(size), 'number')));
  setRows('rooms', rows);
}

/** Draw series as lines, scaled to the largest value; no library, nothing from outside the page. */
function chart(canvas, series, colours) {
  const context = canvas.getContext('2d');
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  const top = Math.max(1, ...series.flat());
  context.fillStyle = '#5a6275';
  context.font = '11px system-ui, sans-serif';
  context.fillText(number(top, 1), 4, 12);
  series.forEach((values, index) => {
    context.strokeStyle = colours[index];
    context.lineWidth = 2;
    context.beginPath();
    values.forEach((value, i) => {
      const x = (i / (HISTORY - 1)) * width;
      const y = height - 4 - (value / top) * (height - 20);
      if (i === 0) context.moveTo(x, y);
      else context.lineTo(x, y);
    });
    context.stroke();
  });
}

// -- Asking for details --------------------------------------------------------------------

function definitionList(entries) {
  const list = el('dl');
  for (const [term, value] of entries) list.append(el('dt', {}, term), el('dd', {}, value));
  return list;
}

async function inspectSid(sid) {
  const out = $('sid-result');
  out.replaceChildren('…');
  try {
    const reply = await admin.emitWithAck('inspect_sid', { sid });
    if (reply.error || !reply.found) {
      out.replaceChildren(reply.error ?? reply.message);
      return;
    }
    const entries = [
      ['sid', reply.sid],
      ['node', reply.node],
      ['address', reply.address],
      ['kept for a resume', reply.kept ? 'yes' : 'no'],
      ['send buffer', bytes(reply.send_buffer)],
      ['pending acks', reply.pending_acks ?? '-'],
    ];
    for (const [namespace, rooms] of Object.entries(reply.namespaces)) {
      const text = rooms.elsewhere ? 'connected (its rooms are known to its own node)' : `${rooms.total}: ${rooms.rooms.join(', ')}`;
      entries.push([`rooms in ${namespace}`, text]);
    }
    out.replaceChildren(definitionList(entries));
    if (writeAllowed) {
      const button = el('button', { type: 'button', class: 'danger', id: 'disconnect-sid' }, 'Disconnect this client');
      button.addEventListener('click', () => disconnectSid(reply.sid));
      out.append(button);
    }
  } catch (error) {
    out.replaceChildren(`failed: ${error.message}`);
  }
}

async function disconnectSid(sid) {
  const out = $('sid-result');
  try {
    const reply = await admin.emitWithAck('disconnect_sid', { sid });
    out.replaceChildren(reply.ok ? `disconnected ${sid}` : reply.error);
  } catch (error) {
    out.replaceChildren(`failed: ${error.message}`);
  }
}

async function inspectRoom(namespace, room, offset = 0) {
  const out = $('room-result');
  out.replaceChildren('…');
  try {
    const reply = await admin.emitWithAck('inspect_room', { namespace, room, offset, limit: 50 });
    if (reply.error) {
      out.replaceChildren(reply.error);
      return;
    }
    const list = el('ul', {}, ...reply.sids.map((sid) => el('li', {}, sid)));
    const summary = `${reply.total} member(s) in ${reply.room} (${reply.namespace}); showing ${offset + 1}–${offset + reply.sids.length}`;
    out.replaceChildren(el('p', {}, reply.total ? summary : `nobody in ${reply.room}`), list);
    if (offset > 0) {
      out.append(el('button', { type: 'button', onclick: () => inspectRoom(namespace, room, Math.max(0, offset - 50)) }, 'Previous'));
    }
    if (offset + reply.sids.length < reply.total) {
      out.append(el('button', { type: 'button', onclick: () => inspectRoom(namespace, room, offset + 50) }, 'Next'));
    }
  } catch (error) {
    out.replaceChildren(`failed: ${error.message}`);
  }
}

$('inspect-sid').addEventListener('submit', (event) => {
  event.preventDefault();
  inspectSid($('sid').value.trim());
});

$('inspect-room').addEventListener('submit', (event) => {
  event.preventDefault();
  inspectRoom($('room-namespace').value, $('room').value);
});

const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) start(saved);
