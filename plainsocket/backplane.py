"""Scale out on Redis: many server processes and hosts act as one server.

Every node publishes what it can not do alone (an emit that may reach clients elsewhere, a
room change or a disconnect for a sid it does not hold, a call) on one Redis pub/sub
channel; every node applies what it receives to its own clients. Replies to a node (call
results, cluster queries) go to that node's own channel.

Messages are JSON objects, parsed strictly and validated on receipt exactly like client
frames — never pickle: whoever can publish to Redis must not be able to run code here.

    {"v":1,"kind":"emit","node":"n1","namespace":"/test","event":"my response","data":{..},
     "to":["room"],"skip":["sid"]}

Delivery across nodes is at-most-once. What an outage costs is counted, logged and shown in
``/healthz``: a publish that fails, and a publish that Redis accepted while fewer nodes than
known alive were subscribed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from .protocol import Envelope, ProtocolError, parse_json, valid_offset

logger = logging.getLogger("plainsocket.backplane")

VERSION = 1
MAX_DEPTH = 128  # server-side data may nest deeper than client frames; still bounded
MAX_QUEUE = 10_000  # messages waiting to be published while Redis is slow


class BackplaneError(Exception):
    """Redis can not be reached (at start) or a backplane message is invalid."""


# -- Messages ------------------------------------------------------------------------------

_STR_LIST = "str list"
# kind -> required fields and their types; "to"/"skip" may also be null.
_SCHEMA: dict[str, dict[str, Any]] = {
    "emit": {"namespace": str, "event": str, "to": _STR_LIST, "skip": _STR_LIST, "offset": (str, type(None))},
    "enter_room": {"namespace": str, "sid": str, "room": str},
    "leave_room": {"namespace": str, "sid": str, "room": str},
    "close_room": {"namespace": str, "room": str},
    "disconnect": {"namespace": (str, type(None)), "sid": str},
    "call": {"namespace": str, "event": str, "to": str, "timeout": (int, float), "call_id": str, "reply_to": str},
    "call_reply": {"call_id": str, "results": list, "error": (str, type(None)), "single": bool},
    "query": {"query_id": str, "reply_to": str, "namespace": (str, type(None)), "room": (str, type(None))},
    "query_reply": {"query_id": str, "sids": _STR_LIST, "count": int},
    "ping": {"ping": int},
    "claim": {"claim_id": str, "reply_to": str, "key": str, "offset": (str, type(None))},
    "claim_reply": {
        "claim_id": str,
        "found": bool,
        "ok": bool,
        "sid": str,
        "state": (dict, type(None)),
        "frames": list,
        "mark": int,
    },
    "finish": {"claim_id": str, "reply_to": str, "sid": str, "mark": int},
    "finish_reply": {"claim_id": str, "frames": _STR_LIST},
    # Published by the presence scripts (presence_redis.py), never by a node itself.
    "presence": {"namespace": str, "room": str, "rev": int, "key": str, "conns": int, "meta": (dict, type(None))},
}
REPLIES = frozenset({"call_reply", "query_reply", "claim_reply", "finish_reply"})
_NODE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # node names end up in logs: nothing else gets in
MAX_TRACKED_SENDERS = 1_000  # senders whose sequence numbers a node remembers


def make_message(kind: str, node: str, **fields: Any) -> str:
    """Encode one backplane message (strict JSON)."""
    return json.dumps({"v": VERSION, "kind": kind, "node": node, **fields}, allow_nan=False, separators=(",", ":"))


def parse_message(raw: bytes | str) -> dict[str, Any]:
    """Parse and validate one backplane message.

    Raises:
        BackplaneError: anything that is not a valid message of a known kind.
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        message = parse_json(text, MAX_DEPTH)
    except (UnicodeDecodeError, ProtocolError) as exc:
        raise BackplaneError(f"unreadable message: {exc}") from None
    if type(message) is not dict or message.get("v") != VERSION:
        raise BackplaneError("not a version 1 message")
    schema = _SCHEMA.get(message.get("kind"))  # type: ignore[arg-type]
    if schema is None or type(message.get("node")) is not str or not _NODE.fullmatch(message["node"]):
        raise BackplaneError("unknown kind or invalid node")
    for field, expected in schema.items():
        value = message.get(field)
        if expected == _STR_LIST:
            ok = value is None or (type(value) is list and all(type(item) is str for item in value))
        elif expected is bool:
            ok = type(value) is bool
        else:
            ok = isinstance(value, expected) and type(value) is not bool
        if not ok:
            raise BackplaneError(f"field {field!r} is invalid")
    seq = message.get("seq")
    if seq is not None and (type(seq) is not int or seq < 1):
        raise BackplaneError("field 'seq' is invalid")
    if message["kind"] == "emit" and message.get("offset") is not None and not valid_offset(message["offset"]):
        raise BackplaneError("field 'offset' is invalid")
    if message["kind"] == "emit":
        try:
            Envelope(message["event"], message["namespace"], message.get("data"))
        except ProtocolError as exc:
            raise BackplaneError(f"invalid event: {exc.message}") from None
    return message


# -- The node's link to Redis -----------------------------------------------------------------


class SessionHolder(Protocol):
    """What the backplane needs of its node's recovery: handing a kept session to the node that claims it."""

    async def release_session(self, key: str, offset: str | None) -> dict[str, Any] | None: ...

    def finish_release(self, sid: str, mark: int) -> list[str] | None: ...


class BackplaneHost(Protocol):
    """What the backplane needs of its node's server (``SocketServer`` is one).

    Defined here, not imported from the server: the server is built on the backplane.
    """

    def start_background_task(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...

    def apply_remote(self, message: dict[str, Any]) -> None: ...

    def connection_count(self, namespace: str | None = None) -> int: ...

    def local_view(self, namespace: str | None, room: str | None) -> tuple[list[str], int]: ...

    async def call_local(
        self, event: str, data: Any, to: str, namespace: str, timeout: float
    ) -> tuple[list[Any], str | None, bool]: ...

    @property
    def recovery(self) -> SessionHolder: ...


class RedisBackplane:
    """One server node's publisher, supervised subscriber and heartbeat."""

    def __init__(
        self,
        server: BackplaneHost,
        url: str,
        *,
        channel: str = "plainsocket",
        heartbeat_interval: float = 2.0,
        publish_timeout: float = 0.5,
    ) -> None:
        self.server = server
        self.url = url
        self.shown_url = redact(url)  # what log lines say: never the password
        self.channel = channel
        self.node = secrets.token_hex(6)
        self.heartbeat_interval = heartbeat_interval
        self.node_ttl = 3 * heartbeat_interval  # a silent node leaves the cluster view after this
        self.publish_timeout = publish_timeout
        self._subscribed = False  # the listener holds a live subscription
        self._reachable = False  # the last command (publish or heartbeat) succeeded
        self.lost = 0  # messages this node sent that Redis did not take or not every node heard
        self.missed = 0  # messages from other senders this node never received (sequence gaps)
        self._seq = 0  # numbers this node's cluster-wide messages, so receivers can see gaps
        self._last_seq: dict[str, int] = {}  # sender -> last sequence number received
        # (channel, message) published in order; a channel "" holds a call (presence scripts)
        self._queue: deque[tuple[str, Any]] = deque()
        self.on_presence: Callable[[dict[str, Any]], None] | None = None
        self._wakeup = asyncio.Event()
        self._nodes: dict[str, float] = {}  # node -> when its heartbeat was last seen
        self._waiters: dict[str, asyncio.Queue[dict[str, Any]]] = {}  # request id -> its replies
        self._ping_sent = 0
        self._ping_seen = 0
        self._ping_sent_at = 0.0
        self.roundtrip: float | None = None  # seconds of the last heartbeat ping through Redis
        # The admin page: this node's statistics go into its heartbeat (with its largest rooms
        # only while some admin of the cluster watches), and watched_until says one watches here.
        self.summary: Callable[[bool], dict[str, Any]] | None = None
        self.watched_until = 0.0
        self._cluster_watched = False
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        self._lost_logged_at = 0.0
        self._lost_unlogged = 0
        # One immediate retry, no backoff: after a Redis restart each pooled connection is stale
        # once; a down Redis still fails a publish in milliseconds, not seconds.
        self.redis = aioredis.Redis.from_url(
            url,
            socket_timeout=max(1.0, heartbeat_interval),
            socket_connect_timeout=1.0,
            retry=AsyncRetry(NoBackoff(), 1),
        )

    @property
    def node_channel(self) -> str:
        return f"{self.channel}#{self.node}"

    async def start(self) -> None:
        """Check Redis, then start publishing, listening and heart-beating.

        Raises:
            BackplaneError: Redis does not answer.
        """
        try:
            async with asyncio.timeout(3):
                await self.redis.ping()
        except (redis.RedisError, OSError, TimeoutError) as exc:
            await self.redis.aclose()
            raise BackplaneError(f"can not reach Redis at {self.shown_url}: {exc or type(exc).__name__}") from None
        subscribed = asyncio.get_running_loop().create_future()
        self._tasks = [
            asyncio.create_task(self._listen(subscribed)),
            asyncio.create_task(self._publish_loop()),
            asyncio.create_task(self._heartbeat_loop()),
        ]
        await asyncio.wait_for(subscribed, 5)
        await self._beat()
        self._set_link(reachable=True)
        logger.info("node %s joined the cluster on %s", self.node, self.shown_url)

    async def stop(self) -> None:
        # Checked by the heartbeat too: a cancellation lost inside a Redis call must not keep
        # beating, which would keep this node alive in every other node's view.
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=2)  # never let a stuck Redis call stall shutdown
        try:
            async with asyncio.timeout(1):
                await self.redis.delete(self._node_key(self.node))
        except (redis.RedisError, OSError, TimeoutError):
            pass
        await self.redis.aclose()

    def health(self) -> dict[str, Any]:
        return {
            "connected": self.link_up,
            "node": self.node,
            "nodes": len(self.alive_nodes()),
            "lost": self.lost,
            "missed": self.missed,
        }

    async def node_summaries(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Read the statistics every node put in its heartbeat key (the admin page's cluster view)."""
        async with asyncio.timeout(self.heartbeat_interval):
            keys = []
            async for key in self.redis.scan_iter(match=self._node_key("*"), count=1000):
                keys.append(key)
                if len(keys) >= limit:
                    break
            values = await self.redis.mget(keys) if keys else []
        summaries = []
        for value in values:
            try:
                summary = json.loads(value) if value else None
            except ValueError:
                continue
            if isinstance(summary, dict) and isinstance(summary.get("node"), str):
                summaries.append(summary)
        return summaries

    def stats(self) -> dict[str, Any]:
        """What the metrics report of this link (see metrics.BackplaneStats)."""
        return {
            "up": self.link_up,
            "nodes": len(self.alive_nodes()),
            "queued": len(self._queue),
            "lost": self.lost,
            "missed": self.missed,
            "roundtrip": self.roundtrip,
        }

    def alive_nodes(self) -> list[str]:
        deadline = time.monotonic() - self.node_ttl
        return [node for node, seen in self._nodes.items() if seen >= deadline]

    # -- Publishing ----------------------------------------------------------------------

    def publish(self, kind: str, **fields: Any) -> None:
        """Queue a message for every node; never waits (local delivery already happened)."""
        self._seq += 1
        self._enqueue(self.channel, make_message(kind, self.node, seq=self._seq, **fields))

    def publish_emit(
        self,
        namespace: str,
        event: str,
        data: Any,
        to: str | Iterable[str] | None,
        skip: str | Iterable[str] | None,
        offset: str | None = None,
    ) -> None:
        self.publish(
            "emit", namespace=namespace, event=event, data=data, to=_as_list(to), skip=_as_list(skip), offset=offset
        )

    def enqueue_call(self, call: Callable[[Any], None], done: Callable[[Any], None]) -> None:
        """Queue ``call(pipeline)`` in order with the messages; ``done`` gets its reply (an exception if it failed)."""
        self._enqueue("", (call, done))

    def _enqueue(self, channel: str, message: Any) -> None:
        if len(self._queue) >= MAX_QUEUE:
            dropped, item = self._queue.popleft()
            self._count_lost(1, "publish queue full")
            if not dropped:
                item[1](BackplaneError("publish queue full"))
        self._queue.append((channel, message))
        self._wakeup.set()

    async def _publish_loop(self) -> None:
        """Publish queued messages in order, a batch per round trip."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), 256))]
                try:
                    await self._publish_batch(batch)
                except Exception:  # our bug: count and log it, keep publishing
                    self._count_lost(len(batch), "unexpected error")
                    logger.exception("publishing to Redis failed")

    async def _publish_batch(self, batch: list[tuple[str, str]]) -> None:
        expected = len(self.alive_nodes())
        pipe = self.redis.pipeline(transaction=False)
        for channel, message in batch:
            if channel:
                pipe.publish(channel, message)
            else:
                message[0](pipe)
        broadcast = [channel == self.channel for channel, _ in batch]
        try:
            async with asyncio.timeout(self.publish_timeout):
                receivers = await pipe.execute()
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self._set_link(reachable=False, why=exc)
            self._count_lost(len(batch), f"publish failed: {exc or type(exc).__name__}")
            for channel, message in batch:
                if not channel:
                    message[1](exc)
            return
        self._set_link(reachable=True)
        for (channel, message), reply in zip(batch, receivers, strict=True):
            if not channel:
                message[1](reply)
        missed = sum(1 for count, wide in zip(receivers, broadcast, strict=True) if wide and count < expected)
        if missed:
            self._count_lost(missed, f"fewer than {expected} nodes subscribed")

    def _count_lost(self, count: int, why: str) -> None:
        """Count and log undelivered cross-node messages (at most one log line per second)."""
        self.lost += count
        self._lost_unlogged += count
        now = time.monotonic()
        if now - self._lost_logged_at >= 1.0:
            logger.error("%d cross-node message(s) not delivered to every node: %s", self._lost_unlogged, why)
            self._lost_logged_at = now
            self._lost_unlogged = 0

    @property
    def link_up(self) -> bool:
        """Whether this node both hears the cluster and can talk to it."""
        return self._subscribed and self._reachable

    def _set_link(
        self, *, subscribed: bool | None = None, reachable: bool | None = None, why: BaseException | None = None
    ) -> None:
        """Record the link's state; log each change between up and down once."""
        was_up = self.link_up
        if subscribed is not None:
            self._subscribed = subscribed
        if reachable is not None:
            self._reachable = reachable
        if was_up and not self.link_up:
            logger.error("lost Redis at %s: %s", self.shown_url, (why and str(why)) or type(why).__name__)
        elif self.link_up and not was_up:
            logger.info("connected to Redis at %s", self.shown_url)

    # -- Subscribing -----------------------------------------------------------------------

    async def _listen(self, subscribed: asyncio.Future[None]) -> None:
        """Supervise the subscription: on any failure, log, back off and subscribe again."""
        delay = 0.05
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel, self.node_channel)
                if not subscribed.done():
                    subscribed.set_result(None)
                self._set_link(subscribed=True)
                delay = 0.05
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message["type"] == "message":
                        try:
                            self._receive(message["data"])
                        except Exception:  # our bug: log it, but never stop listening
                            logger.exception("failed to apply a backplane message")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: never let the node go deaf
                self._set_link(subscribed=False, why=exc)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _receive(self, raw: bytes) -> None:
        try:
            message = parse_message(raw)
        except BackplaneError as exc:
            logger.warning("dropped an invalid backplane message: %s", exc)
            return
        if message["kind"] == "presence":
            if self.on_presence is not None:  # every node applies it, its own included (idempotent)
                self.on_presence(message)
            return
        if message["node"] == self.node and message["kind"] != "ping" and message["kind"] not in REPLIES:
            return  # already delivered locally
        if "seq" in message:
            self._check_gap(message["node"], message["seq"])
        kind = message["kind"]
        if kind == "ping":
            own = message["node"] == self.node
            if own and message["ping"] == self._ping_sent and self._ping_seen < self._ping_sent:
                self.roundtrip = time.monotonic() - self._ping_sent_at  # our own clock: no skew
            self._ping_seen = max(self._ping_seen, message["ping"])
        elif kind in REPLIES:
            request_id = message.get("call_id") or message.get("query_id") or message.get("claim_id")
            replies = self._waiters.get(request_id)  # type: ignore[arg-type]
            if replies is not None:
                replies.put_nowait(message)
        elif kind == "claim":
            self.server.start_background_task(self._answer_claim, message)
        elif kind == "finish":
            frames = self.server.recovery.finish_release(message["sid"], message["mark"])
            self._reply(message["reply_to"], "finish_reply", claim_id=message["claim_id"], frames=frames)
        elif kind == "call":
            self.server.start_background_task(self._answer_call, message)
        elif kind == "query":
            self._answer_query(message)
        else:
            self.server.apply_remote(message)

    def _check_gap(self, sender: str, seq: int) -> None:
        """Count messages from ``sender`` that never arrived: nothing is lost silently."""
        last = self._last_seq.pop(sender, None)
        if last is not None and seq > last + 1:
            self.missed += seq - last - 1
            logger.error("missed %d cluster message(s) from %s (Redis outage?)", seq - last - 1, sender)
        self._last_seq[sender] = max(seq, last or 0)
        if len(self._last_seq) > MAX_TRACKED_SENDERS:
            del self._last_seq[next(iter(self._last_seq))]

    # -- Heartbeat ----------------------------------------------------------------------------

    def _node_key(self, node: str) -> str:
        return f"{self.channel}:node:{node}"

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            if self._stopped:
                return
            try:
                await self._beat()
            except (redis.RedisError, OSError, TimeoutError) as exc:
                self._set_link(reachable=False, why=exc)
            except Exception:  # our bug: log it, keep the heartbeat going
                logger.exception("heartbeat failed")
            else:
                self._set_link(reachable=True)
            self._check_deaf()

    async def _beat(self) -> None:
        """Register this node with a TTL, learn who else is alive, and ping our own channel."""
        async with asyncio.timeout(self.heartbeat_interval):
            key = self._node_key(self.node)
            details: dict[str, Any] = {"connections": self.server.connection_count()}
            if self.summary is not None:
                details.update(self.summary(self._cluster_watched))
            info = json.dumps(details, allow_nan=False)
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(key, info, px=int(self.node_ttl * 1000))
            pipe.publish(self.node_channel, make_message("ping", self.node, ping=self._ping_sent + 1))
            if self.summary is not None:
                watch_key = f"{self.channel}:admin-watching"
                if time.monotonic() < self.watched_until:
                    pipe.set(watch_key, "1", px=int(self.node_ttl * 1000))
                pipe.exists(watch_key)
            self._ping_sent_at = time.monotonic()
            self._ping_sent += 1
            try:
                replies = await pipe.execute()
            except BaseException:
                self._ping_sent -= 1
                raise
            if self.summary is not None:
                self._cluster_watched = bool(replies[-1])
            now = time.monotonic()
            prefix = len(self._node_key(""))
            async for key in self.redis.scan_iter(match=self._node_key("*"), count=1000):
                self._nodes[key.decode()[prefix:]] = now
            self._nodes[self.node] = now
            # Forget nodes gone for longer than their TTL.
            for node in [n for n, seen in self._nodes.items() if seen < now - self.node_ttl]:
                del self._nodes[node]

    def _check_deaf(self) -> None:
        """Restart the subscription if our own pings stopped coming back (a deaf listener)."""
        if self._ping_sent - self._ping_seen >= 2 and self._subscribed and not self._stopped:
            logger.error("not receiving our own pings from Redis: restarting the subscription")
            self._set_link(subscribed=False)
            self._ping_seen = self._ping_sent
            listener = self._tasks[0]
            listener.cancel()
            self._tasks[0] = asyncio.create_task(self._listen(asyncio.get_running_loop().create_future()))

    # -- Requests to other nodes: calls and queries -------------------------------------------

    async def _gather_replies(
        self, kind: str, id_field: str, wait: float, stop: Any = None, **fields: Any
    ) -> list[dict[str, Any]]:
        """Publish a request; collect one reply per other alive node (or until ``stop(reply)``)."""
        request_id = secrets.token_hex(8)
        replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._waiters[request_id] = replies
        others = {node for node in self.alive_nodes() if node != self.node}
        collected: list[dict[str, Any]] = []
        try:
            self.publish(kind, reply_to=self.node, **{id_field: request_id}, **fields)
            async with asyncio.timeout(wait):
                while others:
                    reply = await replies.get()
                    others.discard(reply["node"])
                    collected.append(reply)
                    if stop is not None and stop(reply):
                        break
        except TimeoutError:
            pass
        finally:
            del self._waiters[request_id]
        return collected

    async def _first_reply(self, kind: str, channel: str, wait: float, **fields: Any) -> dict[str, Any] | None:
        """Send a request and return the first reply to it, or None after ``wait`` seconds."""
        request_id = secrets.token_hex(8)
        replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._waiters[request_id] = replies
        try:
            numbered: dict[str, int] = {}
            if channel == self.channel:  # cluster-wide messages carry their sequence number
                self._seq += 1
                numbered["seq"] = self._seq
            self._enqueue(
                channel, make_message(kind, self.node, claim_id=request_id, reply_to=self.node, **numbered, **fields)
            )
            async with asyncio.timeout(wait):
                return await replies.get()
        except TimeoutError:
            return None
        finally:
            del self._waiters[request_id]

    async def claim(self, key: str, offset: str | None, wait: float) -> dict[str, Any] | None:
        """Ask the node holding the session of token digest ``key`` to hand it over."""
        for reply in await self._gather_replies("claim", "claim_id", wait, key=key, offset=offset, stop=_found):
            if reply["found"]:
                return reply
        return None

    async def finish_claim(self, node: str, sid: str, mark: int, wait: float) -> list[str] | None:
        """Take the frames ``node`` recorded for ``sid`` since ``mark``; the session leaves ``node``."""
        reply = await self._first_reply("finish", f"{self.channel}#{node}", wait, sid=sid, mark=mark)
        return None if reply is None else reply["frames"]

    async def call(self, event: str, data: Any, to: str, namespace: str, timeout: float) -> list[dict[str, Any]]:
        """Ask other nodes to call their clients in ``to`` (a sid or a room); return their replies."""
        return await self._gather_replies(
            "call", "call_id", timeout, namespace=namespace, event=event, data=data, to=to, timeout=timeout
        )

    async def _answer_claim(self, message: dict[str, Any]) -> None:
        # Every node answers, so that an unknown token is settled in one round trip.
        released = await self.server.recovery.release_session(message["key"], message["offset"])
        reply = released or {"ok": False, "sid": "", "state": None, "frames": [], "mark": 0}
        self._reply(
            message["reply_to"], "claim_reply", claim_id=message["claim_id"], found=released is not None, **reply
        )

    async def _answer_call(self, message: dict[str, Any]) -> None:
        # Answer a little before the caller gives up, so that a late client is reported as such.
        results, error, single = await self.server.call_local(
            message["event"],
            message.get("data"),
            message["to"],
            message["namespace"],
            max(0.0, message["timeout"] - 0.05),
        )
        self._reply(
            message["reply_to"], "call_reply", call_id=message["call_id"], results=results, error=error, single=single
        )

    async def query(self, namespace: str | None, room: str | None, timeout: float = 1.0) -> list[dict[str, Any]]:
        """Ask every other node for its sids (in ``namespace``/``room``) and connection count."""
        return await self._gather_replies("query", "query_id", timeout, namespace=namespace, room=room)

    def _answer_query(self, message: dict[str, Any]) -> None:
        sids, count = self.server.local_view(message["namespace"], message["room"])
        self._reply(message["reply_to"], "query_reply", query_id=message["query_id"], sids=sids, count=count)

    def _reply(self, node: str, kind: str, **fields: Any) -> None:
        self._enqueue(f"{self.channel}#{node}", make_message(kind, self.node, **fields))


class Emitter:
    """Emit to a plainsocket cluster from code that is not a server (a web view, a cron job).

    Synchronous on purpose: it is for plain scripts and web frameworks. Nothing is delivered
    when no server node is subscribed; :meth:`emit` returns how many nodes received it.
    """

    def __init__(self, url: str, *, channel: str = "plainsocket") -> None:
        self.channel = channel
        self.node = "emitter-" + secrets.token_hex(4)
        # Offsets (connection state recovery) are given here, once per emit, as a node gives
        # them to its own emits: every node then records the frame under the same offset, and
        # a session handed from one node to another gets it once.
        self._offset_prefix = secrets.token_hex(4)
        self._offset_count = 0
        self.redis = redis.Redis.from_url(
            url, socket_timeout=2.0, socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 0)
        )

    def emit(
        self,
        event: str,
        data: Any = None,
        *,
        namespace: str = "/",
        to: str | Iterable[str] | None = None,
        skip_sid: str | Iterable[str] | None = None,
    ) -> int:
        """Emit to every client of ``namespace`` (or a room, a sid, a list); return the node count."""
        Envelope(event, namespace, data)  # validate before publishing
        self._offset_count += 1
        message = make_message(
            "emit",
            self.node,
            namespace=namespace,
            event=event,
            data=data,
            to=_as_list(to),
            skip=_as_list(skip_sid),
            offset=f"{self._offset_prefix}-{self._offset_count}",
        )
        return int(self.redis.publish(self.channel, message))

    def close_room(self, room: str, *, namespace: str = "/") -> int:
        return int(
            self.redis.publish(self.channel, make_message("close_room", self.node, namespace=namespace, room=room))
        )

    def disconnect(self, sid: str, *, namespace: str | None = None) -> int:
        return int(
            self.redis.publish(self.channel, make_message("disconnect", self.node, namespace=namespace, sid=sid))
        )

    def close(self) -> None:
        self.redis.close()


def redact(url: str) -> str:
    """``redis://user:secret@host:6379/0`` -> ``redis://user:***@host:6379/0``, for log lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _found(reply: dict[str, Any]) -> bool:
    return bool(reply.get("found"))


def _as_list(value: str | Iterable[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return list(value)
