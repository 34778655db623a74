"""Presence across a cluster: joins and leaves decided in Redis, atomically, by Lua scripts.

Every change of a room runs one script that updates the room's hashes, bumps the room's
revision and publishes the change on the backplane channel, all in one step: two nodes can
not both announce a key's join, and every node hears a room's changes in revision order. The
scripts run in the node's ordered publish queue (``RedisBackplane.enqueue_call``), so a change
reaches the other nodes before any message its member sends after it.

Keys, per room (``rid`` is ``["/ns","room"]`` in compact JSON)::

    {channel}:presence:r:{rid}:c    HASH  sid -> "node\\nkey"  (each connection and its owner)
    {channel}:presence:r:{rid}:k    HASH  key -> connections
    {channel}:presence:r:{rid}:m    HASH  key -> metadata (JSON)
    {channel}:presence:r:{rid}:rev  the room's revision
    {channel}:presence:node:{node}  SET   "rid\\nsid" owned by a node
    {channel}:presence:nodes        SET   nodes that own entries

A node that stops heart-beating (``{channel}:node:{node}`` expires: 3 heartbeats) is swept by
any live node one to two seconds later (its key gone at two looks in a row): its entries go,
with their leaves published. The same sweep clears what a whole cluster left behind when it
was killed. A node whose entries Redis lost (swept while it was cut off, a Redis restart, a
script that failed) puts them back, and removes the stale ones.

Published changes (validated by the backplane like every message)::

    {"v":1,"kind":"presence","node":"n1","namespace":"/chat","room":"lobby","rev":7,
     "key":"alice","conns":2,"meta":{"name":"Alice"}}         (conns 0 and meta null: a leave)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis

from .presence import Entry

if TYPE_CHECKING:
    from .backplane import RedisBackplane
    from .presence_hub import PresenceHub

logger = logging.getLogger("plainsocket.presence")

SWEEP_INTERVAL = 1.0  # seconds between two looks for dead nodes (one is swept at its second)
SWEEP_BATCH = 500  # entries one script call removes: Redis is never blocked for long
EMPTY_ROOM_TTL = 86_400  # an empty room's revision is kept this long (revisions never go back)

_LIB = r"""
local P, ch = ARGV[1], ARGV[2]
local function announce(node, ns, room, rev, key, conns, meta)
  redis.call('PUBLISH', ch, '{"v":1,"kind":"presence","node":' .. cjson.encode(node) ..
    ',"namespace":' .. cjson.encode(ns) .. ',"room":' .. cjson.encode(room) .. ',"rev":' .. rev ..
    ',"key":' .. cjson.encode(key) .. ',"conns":' .. conns .. ',"meta":' .. (meta or 'null') .. '}')
end
local function split(value)
  local at = string.find(value, '\n', 1, true)
  return string.sub(value, 1, at - 1), string.sub(value, at + 1)
end
local function remove(node, rid, ns, room, sid)
  local base = P .. ':r:' .. rid
  local value = redis.call('HGET', base .. ':c', sid)
  if not value then return false end
  local owner, key = split(value)
  redis.call('HDEL', base .. ':c', sid)
  redis.call('SREM', P .. ':node:' .. owner, rid .. '\n' .. sid)
  local conns = redis.call('HINCRBY', base .. ':k', key, -1)
  local meta = false
  if conns <= 0 then
    conns = 0
    redis.call('HDEL', base .. ':k', key)
    redis.call('HDEL', base .. ':m', key)
  else
    meta = redis.call('HGET', base .. ':m', key)
  end
  local rev = redis.call('INCR', base .. ':rev')
  if redis.call('HLEN', base .. ':k') == 0 then redis.call('EXPIRE', base .. ':rev', ARGV[3]) end
  announce(node, ns, room, rev, key, conns, meta)
  return {rev, key, conns, meta}
end
"""

# ARGV: P, ch, ttl, node, rid, ns, room, sid, key, meta, snapshot
ADD = (
    _LIB
    + r"""
local node, rid, ns, room, sid = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local key, meta, snap = ARGV[9], ARGV[10], ARGV[11]
local base = P .. ':r:' .. rid
local entry = rid .. '\n' .. sid
local current = redis.call('HGET', base .. ':c', sid)
local rev, conns
if current then
  local owner, known = split(current)
  key = known
  if owner ~= node then  -- a session resumed here: this node owns it now, nobody is told
    redis.call('SREM', P .. ':node:' .. owner, entry)
    redis.call('HSET', base .. ':c', sid, node .. '\n' .. key)
  end
  rev = tonumber(redis.call('GET', base .. ':rev') or '0')
  conns = tonumber(redis.call('HGET', base .. ':k', key) or '0')
else
  redis.call('HSET', base .. ':c', sid, node .. '\n' .. key)
  conns = redis.call('HINCRBY', base .. ':k', key, 1)
  if conns == 1 then redis.call('HSET', base .. ':m', key, meta) end
  redis.call('PERSIST', base .. ':rev')
  rev = redis.call('INCR', base .. ':rev')
end
redis.call('SADD', P .. ':node:' .. node, entry)
redis.call('SADD', P .. ':nodes', node)
local stored = redis.call('HGET', base .. ':m', key) or '{}'
if not current then announce(node, ns, room, rev, key, conns, stored) end
local result = {rev, key, conns, stored}
if snap == '1' then
  result[5] = redis.call('HGETALL', base .. ':k')
  result[6] = redis.call('HGETALL', base .. ':m')
end
return result
"""
)

# ARGV: P, ch, ttl, node, rid, ns, room, sid
REMOVE = (
    _LIB
    + r"""
return remove(ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
"""
)

# ARGV: P, ch, ttl, node, rid, ns, room, key, meta
UPDATE = (
    _LIB
    + r"""
local node, rid, ns, room, key, meta = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local base = P .. ':r:' .. rid
local conns = tonumber(redis.call('HGET', base .. ':k', key) or '0')
if conns == 0 then return false end
redis.call('HSET', base .. ':m', key, meta)
local rev = redis.call('INCR', base .. ':rev')
announce(node, ns, room, rev, key, conns, meta)
return {rev, key, conns, meta}
"""
)

# ARGV: P, ch, ttl, node, heartbeat key prefix, batch, suspects...
# A node is swept when its heartbeat key is gone now and was gone at the previous look too
# (it is a suspect): one late heartbeat of a stalled but live node costs nothing.
SWEEP = (
    _LIB
    + r"""
local node, beat, batch = ARGV[4], ARGV[5], tonumber(ARGV[6])
local suspects = {}
for i = 7, #ARGV do suspects[ARGV[i]] = true end
local removed = 0
local missing = {}
for _, dead in ipairs(redis.call('SMEMBERS', P .. ':nodes')) do
  if redis.call('EXISTS', beat .. dead) == 0 then table.insert(missing, dead) end
end
for _, dead in ipairs(missing) do
  if suspects[dead] and removed < batch then
    local owned = P .. ':node:' .. dead
    for _, entry in ipairs(redis.call('SRANDMEMBER', owned, batch)) do
      local rid, sid = split(entry)
      local name = cjson.decode(rid)
      if not remove(node, rid, name[1], name[2], sid) then redis.call('SREM', owned, entry) end
      removed = removed + 1
    end
    if redis.call('SCARD', owned) == 0 then redis.call('SREM', P .. ':nodes', dead) end
  end
end
return {removed, missing}
"""
)


def room_id(namespace: str, room: str) -> str:
    return json.dumps([namespace, room], separators=(",", ":"), ensure_ascii=False)


class RedisPresence:
    """The cluster's presence store for one node (the hub's ``store`` when Redis is on)."""

    def __init__(self, hub: PresenceHub, backplane: RedisBackplane) -> None:
        self.hub = hub
        self.backplane = backplane
        self.prefix = f"{backplane.channel}:presence"
        self.sweeps = 0  # entries of dead nodes this node removed
        self._task: asyncio.Task[None] | None = None
        self._failed = False  # a script did not run: re-assert this node's entries
        self._differed = False  # Redis did not hold this node's entries at the last tick
        self._sha: dict[str, str] = {}
        self._suspects: list[str] = []  # nodes whose heartbeat key was gone at the last sweep
        self._inflight: dict[tuple[str, str, str], int] = {}  # (ns, room, key) -> local changes unanswered
        self._deferred: dict[tuple[str, str, str], tuple[int, Entry | None]] = {}  # the newest that came meanwhile

    async def start(self) -> None:
        """Load the scripts into Redis, listen for changes, start sweeping."""
        await self._load_scripts()
        self.backplane.on_presence = self.received
        self._task = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def _load_scripts(self) -> None:
        # EVALSHA in the publish pipeline: a change costs its arguments, not the script's text.
        for script in (ADD, REMOVE, UPDATE):
            self._sha[script] = _text(await self.backplane.redis.script_load(script))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    # -- Changes (the hub applies them at once, Redis decides, every node is told) ----------

    def add(self, namespace: str, room: str, sid: str, key: str, meta: dict[str, Any], *, moved: bool = False) -> None:
        view = self.hub.views.get((namespace, room))
        first = view is not None and view.rev == 0  # a view just created: it needs the room's members
        if view is not None and not first and not moved:
            # Shown here at once, so that this node's observers see the join before any message
            # of the member; Redis corrects the connection count when it answers.
            known = view.members.get(key)
            guess = Entry(known.meta if known else meta, (known.conns if known else 0) + 1)
            self.hub.applied(namespace, room, key, guess)
        name = self._local(namespace, room, key)
        snapshot = "1" if first else "0"
        args = (self.backplane.node, room_id(namespace, room), namespace, room, sid, key, _json(meta), snapshot)
        self._run(ADD, args, name, lambda reply: self._added(name, reply), lambda: self.hub.greet(namespace, room, sid))

    def remove(self, namespace: str, room: str, sid: str, key: str) -> None:
        view = self.hub.views.get((namespace, room))
        if view is not None:
            known = view.members.get(key)
            if known is not None:
                self.hub.applied(namespace, room, key, Entry(known.meta, known.conns - 1) if known.conns > 1 else None)
        name = self._local(namespace, room, key)
        args = (self.backplane.node, room_id(namespace, room), namespace, room, sid)
        self._run(REMOVE, args, name, lambda reply: self._changed(name, reply))

    def update(self, namespace: str, room: str, key: str, meta: dict[str, Any]) -> None:
        view = self.hub.views.get((namespace, room))
        if view is not None and key in view.members:
            self.hub.applied(namespace, room, key, Entry(meta, view.members[key].conns))
        name = self._local(namespace, room, key)
        args = (self.backplane.node, room_id(namespace, room), namespace, room, key, _json(meta))
        self._run(UPDATE, args, name, lambda reply: self._changed(name, reply))

    def _local(self, namespace: str, room: str, key: str) -> tuple[str, str, str]:
        """Count a change of ``key`` made here and not answered yet.

        Until every such change is answered, what this node shows for the key is its own guess:
        an older answer (or another node's change) arriving meanwhile must not undo a newer local
        change, or an observer here could see the member leave between its join and its message.
        The newest of what arrived is applied when the last answer comes.
        """
        name = (namespace, room, key)
        self._inflight[name] = self._inflight.get(name, 0) + 1
        return name

    def _keep(self, name: tuple[str, str, str], rev: int, entry: Entry | None) -> None:
        """Apply an answer or a published change, or keep it while local changes of the key are unanswered."""
        if name in self._inflight:
            self._defer(name, rev, entry)
        else:
            self.hub.applied(*name, entry, source_rev=rev)

    def _defer(self, name: tuple[str, str, str], rev: int, entry: Entry | None) -> None:
        latest = self._deferred.get(name)
        if latest is None or rev > latest[0]:
            self._deferred[name] = (rev, entry)

    def _settle(self, name: tuple[str, str, str]) -> None:
        left = self._inflight.get(name, 0) - 1
        if left > 0:
            self._inflight[name] = left
            return
        self._inflight.pop(name, None)
        latest = self._deferred.pop(name, None)
        if latest is not None:
            namespace, room, key = name
            self.hub.applied(namespace, room, key, latest[1], source_rev=latest[0])

    def _run(
        self,
        script: str,
        args: tuple[str, ...],
        name: tuple[str, str, str],
        done: Callable[[Any], None],
        after: Callable[[], None] | None = None,
    ) -> None:
        common = (self.prefix, self.backplane.channel, str(EMPTY_ROOM_TTL))

        def call(pipe: Any) -> None:
            pipe.evalsha(self._sha[script], 0, *common, *args)

        def finish(reply: Any) -> None:
            failed = isinstance(reply, BaseException)
            if failed:
                self._failed = True  # the next sweep tick puts this node's entries back
            else:
                done(reply)
            self._settle(name)
            if after is not None and not failed:
                after()

        self.backplane.enqueue_call(call, finish)

    def _added(self, name: tuple[str, str, str], reply: Any) -> None:
        """Keep an add's answer (and take the room's members from it when it has them)."""
        namespace, room, _ = name
        rev, key, conns, meta = int(reply[0]), _text(reply[1]), int(reply[2]), _meta(reply[3])
        if len(reply) > 4:
            counts, metas = _pairs(reply[4]), _pairs(reply[5])
            members = {k: Entry(_meta(metas.get(k)), int(c)) for k, c in counts.items()}
            guessed = [k for ns, r, k in self._inflight if (ns, r) == (namespace, room)]
            for k in guessed:
                self._defer((namespace, room, k), rev, members.get(k))  # this node's guess until answered
            self.hub.loaded(namespace, room, members, rev, keep=guessed)
        self._keep((namespace, room, key), rev, Entry(meta, conns) if conns else None)

    def _changed(self, name: tuple[str, str, str], reply: Any) -> None:
        if not reply:
            return
        namespace, room, _ = name
        rev, key, conns = int(reply[0]), _text(reply[1]), int(reply[2])
        self._keep((namespace, room, key), rev, Entry(_meta(reply[3]), conns) if conns else None)

    def received(self, message: dict[str, Any]) -> None:
        """Apply a change another node (or this one) published; older ones are ignored."""
        meta = message.get("meta")
        entry = Entry(meta if isinstance(meta, dict) else {}, message["conns"]) if message["conns"] > 0 else None
        self._keep((message["namespace"], message["room"], message["key"]), message["rev"], entry)

    # -- Reading a room this node does not mirror --------------------------------------------

    async def page(
        self, namespace: str, room: str, cursor: str | None, limit: int, *, key: str | None = None
    ) -> dict[str, Any] | None:
        base = f"{self.prefix}:r:{room_id(namespace, room)}"
        pipe = self.backplane.redis.pipeline(transaction=True)
        pipe.hgetall(f"{base}:k")
        pipe.hgetall(f"{base}:m")
        pipe.get(f"{base}:rev")
        counts_raw, metas_raw, rev = await pipe.execute()
        counts = {_text(k): int(v) for k, v in counts_raw.items()}
        metas = {_text(k): v for k, v in metas_raw.items()}
        members = {k: {"meta": _meta(metas.get(k)), "conns": c} for k, c in counts.items()}
        if key is not None:
            chosen = {key: members[key]} if key in members else {}
            next_cursor = None
        else:
            keys = sorted(k for k in members if cursor is None or k > cursor)
            chosen = {k: members[k] for k in keys[:limit]}
            next_cursor = keys[limit - 1] if limit and len(keys) > limit else None
        return {
            "room": room,
            "rev": int(rev or 0),
            "count": {"users": len(counts), "connections": sum(counts.values())},
            "members": chosen,
            "cursor": next_cursor,
        }

    # -- Dead nodes and lost entries ----------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                if self._failed:
                    await self._load_scripts()  # a restarted Redis forgot them (NOSCRIPT)
                await self.sweep()
                await self._reassert_if_swept()
            except (redis.RedisError, OSError, TimeoutError) as exc:
                logger.warning("presence sweep failed: %s", exc or type(exc).__name__)
                self._failed = True
            except Exception:  # our bug: log it, keep sweeping
                logger.exception("presence sweep failed")

    async def sweep(self) -> int:
        """Remove the entries of nodes whose heartbeat expired (their leaves are published)."""
        removed = 0
        common = (self.prefix, self.backplane.channel, str(EMPTY_ROOM_TTL))
        beat = f"{self.backplane.channel}:node:"  # the backplane's heartbeat keys
        for _ in range(100):  # bounded: at most 50,000 entries per tick
            args = (self.backplane.node, beat, SWEEP_BATCH, *self._suspects)
            count, missing = await self.backplane.redis.eval(SWEEP, 0, *common, *args)
            removed += int(count)
            if int(count) < SWEEP_BATCH:
                break
        self._suspects = sorted(_text(node) for node in missing)
        if removed:
            self.sweeps += removed
            logger.info("presence: removed %d entries of stopped nodes", removed)
        return removed

    async def _reassert_if_swept(self) -> None:
        """Make Redis hold exactly this node's entries again after it lost some (a partition, a
        Redis restart, a script that did not run): put back what is missing, remove what is stale.

        A shortfall must be seen on two ticks in a row: entries whose scripts are still queued
        are not in Redis yet.
        """
        entries = {
            f"{room_id(namespace, room)}\n{sid}": (namespace, room, sid, key, meta)
            for namespace, room, sid, key, meta in self.hub.tracked_entries()
        }
        owner = f"{self.prefix}:node:{self.backplane.node}"
        owned = {_text(member) for member in await self.backplane.redis.smembers(owner)}
        differs = owned != set(entries)
        # Members whose add failed (its answer timed out, perhaps after it ran) still wait for
        # the room's state: adding again is harmless and answers with it.
        waiting = {m for m, (ns, room, sid, _, _) in entries.items() if self.hub.awaits_state(ns, room, sid)}
        if not (differs or (self._failed and waiting)) or not (self._failed or self._differed):
            self._differed = differs
            return
        self._failed = self._differed = False
        missing = [entries[member] for member in (set(entries) - owned) | waiting]
        stale = owned - set(entries)
        if differs:
            logger.warning(
                "presence: putting back %d entries of this node, removing %d stale ones", len(missing), len(stale)
            )
        for namespace, room, sid, key, meta in missing:
            args = (self.backplane.node, room_id(namespace, room), namespace, room, sid, key, _json(meta), "1")
            name = self._local(namespace, room, key)
            greet = self.hub.awaits_state(namespace, room, sid)  # its own add failed: no state yet
            self._run(
                ADD,
                args,
                name,
                lambda reply, n=name: self._added(n, reply),
                (lambda ns=namespace, r=room, s=sid: self.hub.greet(ns, r, s)) if greet else None,
            )
        for member in stale:
            rid, _, sid = member.partition("\n")
            try:
                namespace, room = json.loads(rid)
            except (ValueError, TypeError):
                continue
            args = (self.backplane.node, rid, namespace, room, sid)
            name = self._local(namespace, room, "\0" + sid)  # its key is in the answer only
            self._run(REMOVE, args, name, lambda reply, n=name: self._changed(n, reply))


def _json(meta: dict[str, Any]) -> str:
    return json.dumps(meta, separators=(",", ":"), ensure_ascii=False)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _meta(value: Any) -> dict[str, Any]:
    if not value:
        return {}
    try:
        meta = json.loads(value)
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _pairs(flat: Any) -> dict[str, Any]:
    items = list(flat or ())
    return {_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}
