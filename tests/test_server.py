"""server.py over real sockets: namespaces, events, rooms, acks, errors, tracking, lifecycle."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import urllib.request
from typing import Any

import pytest
from conftest import running, until
from websockets.exceptions import ConnectionClosed

from plainsocket import (
    CallTimeoutError,
    ClientDisconnectedError,
    Namespace,
    SocketServer,
    close_room,
    disconnect,
    emit,
    join_room,
    leave_room,
    request,
    rooms,
    send,
    session,
)


def make_server(**options: Any) -> SocketServer:
    """A small app covering every handler style."""
    socketio = SocketServer(**options)

    @socketio.on("echo", namespace="/chat")
    def echo(data: Any) -> None:
        emit("echoed", data)

    @socketio.on("add", namespace="/chat")
    def add(data: list[int]) -> int:
        return sum(data)

    @socketio.on("slow add", namespace="/chat")
    async def slow_add(data: list[int]) -> int:
        await asyncio.sleep(0.01)
        return sum(data)

    @socketio.on("shout", namespace="/chat")
    def shout(data: Any) -> None:
        emit("shouted", data, broadcast=True)

    @socketio.on("shout others", namespace="/chat")
    def shout_others(data: Any) -> None:
        emit("shouted", data, broadcast=True, include_self=False)

    @socketio.on("join", namespace="/chat")
    def on_join(room: str) -> list[str]:
        join_room(room)
        return rooms()

    @socketio.on("leave", namespace="/chat")
    def on_leave(room: str) -> list[str]:
        leave_room(room)
        return rooms()

    @socketio.on("to room", namespace="/chat")
    def to_room(data: dict[str, Any]) -> None:
        emit("room message", data["text"], to=data["room"])

    @socketio.on("close", namespace="/chat")
    def on_close(room: str) -> None:
        close_room(room)

    @socketio.on("whoami", namespace="/chat")
    def whoami() -> dict[str, str]:
        return {"sid": request.sid, "namespace": request.namespace, "address": request.remote_address}

    @socketio.on("remember", namespace="/chat")
    def remember(value: Any) -> None:
        session["value"] = value

    @socketio.on("recall", namespace="/chat")
    def recall() -> Any:
        return session.get("value")

    @socketio.on("fail", namespace="/chat")
    def fail() -> None:
        raise RuntimeError("secret internal detail")

    @socketio.on("async fail", namespace="/chat")
    async def async_fail() -> None:
        raise RuntimeError("secret internal detail")

    @socketio.on("kick me", namespace="/chat")
    def kick_me() -> None:
        disconnect()

    @socketio.on("send plain", namespace="/chat")
    def send_plain(data: Any) -> None:
        send(data)
        send(data, json=True)

    return socketio


@pytest.fixture
async def app() -> Any:
    socketio = make_server()
    async with running(socketio) as url:
        socketio.test_url = url  # type: ignore[attr-defined]
        yield socketio


# -- Connecting -------------------------------------------------------------------------------


async def test_first_frame_is_connect_with_sid_and_protocol(app: SocketServer, opened: Any) -> None:
    """On open the server connects the client to '/' and says which protocol it speaks."""
    client = await opened(app.test_url)
    assert client.hello["event"] == "connect"
    assert client.hello["namespace"] == "/"
    assert client.hello["data"]["protocol"] == 1
    assert len(client.hello["data"]["sid"]) >= 16
    assert app.sids("/") == [client.sid]


async def test_each_connection_gets_its_own_sid(app: SocketServer, opened: Any) -> None:
    """One sid per connection, the same in every namespace."""
    a, b = await opened(app.test_url), await opened(app.test_url)
    assert a.sid != b.sid
    joined = await a.join("/chat")
    assert joined["data"] == {"sid": a.sid}


async def test_unknown_namespace_is_a_connect_error(app: SocketServer, opened: Any) -> None:
    """Connecting to a namespace nobody registered answers connect_error; the socket stays open."""
    client = await opened(app.test_url)
    await client.send("connect", None, "/nowhere")
    frame = await client.expect("connect_error", "/nowhere")
    assert frame["data"] == {"message": "unknown namespace"}
    await client.join("/chat")


async def test_connect_twice_is_idempotent(app: SocketServer, opened: Any) -> None:
    """A second connect to the same namespace answers connect again and changes nothing."""
    client = await opened(app.test_url)
    await client.join("/chat")
    await client.join("/chat")
    assert app.sids("/chat") == [client.sid]


async def test_connect_handler_refusal_and_auth(opened: Any) -> None:
    """A connect handler refuses with False or ConnectionRefusedError(message); auth reaches it."""
    socketio = SocketServer()
    seen: list[Any] = []

    @socketio.on("connect", namespace="/private")
    def check(auth: Any) -> bool:
        seen.append(auth)
        if auth == {"token": "wrong"}:
            raise ConnectionRefusedError("bad token")
        return auth == {"token": "right"}

    @socketio.on("news", namespace="/private")
    def news() -> None:
        pass

    async with running(socketio) as url:
        client = await opened(url)
        await client.send("connect", None, "/private")
        assert (await client.expect("connect_error", "/private"))["data"] == {"message": "connection refused"}
        await client.send("connect", {"token": "wrong"}, "/private")
        assert (await client.expect("connect_error", "/private"))["data"] == {"message": "bad token"}
        await client.send("news", None, "/private")
        assert (await client.expect("error", "/private"))["data"]["code"] == "not_connected"
        await client.join("/private", {"token": "right"})
        assert seen == [None, {"token": "wrong"}, {"token": "right"}]


async def test_refused_client_receives_nothing_from_the_namespace(opened: Any) -> None:
    """Emits made by a refusing connect handler, and later broadcasts, never reach the refused client."""
    socketio = SocketServer()

    @socketio.on("connect", namespace="/vip")
    def check(auth: Any) -> bool:
        join_room("lounge")
        emit("welcome", "secret")
        return auth == "pass"

    async with running(socketio) as url:
        member, outsider = await opened(url), await opened(url)
        await member.send("connect", "pass", "/vip")
        await member.expect("connect", "/vip")  # connect comes before the handler's emits
        assert (await member.expect("welcome", "/vip"))["data"] == "secret"
        await outsider.send("connect", "nope", "/vip")
        await outsider.expect("connect_error", "/vip")
        socketio.emit("news", 1, namespace="/vip")
        socketio.emit("lounge news", 2, namespace="/vip", to="lounge")
        await member.expect("news")
        await member.expect("lounge news")
        assert await outsider.silent()
        assert socketio.members("lounge", namespace="/vip") == [member.sid]


async def test_root_namespace_refusal_keeps_socket_open_for_retry(opened: Any) -> None:
    """When '/' refuses, the first frame is connect_error and the client may retry with auth."""
    socketio = SocketServer()

    @socketio.on("connect")
    def check(auth: Any) -> bool:
        return auth == {"token": "t"}

    async with running(socketio) as url:
        client = await opened(url)
        assert client.hello == {"event": "connect_error", "namespace": "/", "data": {"message": "connection refused"}}
        assert socketio.sids("/") == []
        await client.send("connect", {"token": "t"}, "/")
        frame = await client.expect("connect", "/")
        assert frame["data"]["protocol"] == 1
        assert socketio.sids("/") == [frame["data"]["sid"]]


async def test_async_connect_handler_and_frames_in_order(opened: Any) -> None:
    """An async connect handler finishes before later frames from the client are handled."""
    socketio = SocketServer()

    @socketio.on("connect", namespace="/a")
    async def check(auth: Any) -> None:
        await asyncio.sleep(0.05)
        emit("hello", auth)

    @socketio.on("ping", namespace="/a")
    def ping(n: int) -> None:
        emit("pong", n)

    async with running(socketio) as url:
        client = await opened(url)
        await client.send("connect", "x", "/a")
        await client.send("ping", 1, "/a")
        await client.expect("connect", "/a")
        assert (await client.expect("hello"))["data"] == "x"
        assert (await client.expect("pong"))["data"] == 1


async def test_client_leaves_namespace_and_socket_stays_open(opened: Any) -> None:
    """disconnect from the client leaves the namespace; its handler gets 'client disconnect'."""
    socketio = SocketServer()
    reasons: list[str] = []
    socketio.on_event("disconnect", reasons.append, namespace="/chat")
    socketio.on_event("connect", lambda: None, namespace="/chat")

    async with running(socketio) as url:
        client = await opened(url)
        await client.join("/chat")
        await client.send("disconnect", None, "/chat")
        await until(lambda: reasons == ["client disconnect"])
        assert socketio.sids("/chat") == []
        await client.join("/chat")  # still open: rejoin works


# -- Events and acknowledgements -----------------------------------------------------------------


async def test_sync_handler_emits_to_sender(app: SocketServer, opened: Any) -> None:
    """emit() in a handler answers the sender only."""
    a, b = await opened(app.test_url), await opened(app.test_url)
    await a.join("/chat")
    await b.join("/chat")
    await a.send("echo", {"x": 1}, "/chat")
    assert (await a.expect("echoed", "/chat"))["data"] == {"x": 1}
    assert await b.silent()


@pytest.mark.parametrize("event", ["add", "slow add"])
async def test_return_value_is_the_ack(app: SocketServer, opened: Any, event: str) -> None:
    """A handler's return value (def or async def) comes back as ack with the same id."""
    client = await opened(app.test_url)
    await client.join("/chat")
    frame = await client.call(event, [1, 2, 3], "/chat", id=41)
    assert frame == {"event": "ack", "namespace": "/chat", "data": 6, "id": 41}


async def test_ack_is_null_when_handler_returns_nothing(app: SocketServer, opened: Any) -> None:
    """A handler that returns None acknowledges with data null."""
    client = await opened(app.test_url)
    await client.join("/chat")
    await client.send("echo", 5, "/chat", id=3)
    await client.expect("echoed")
    assert await client.expect("ack") == {"event": "ack", "namespace": "/chat", "data": None, "id": 3}


async def test_events_are_handled_in_order_across_sync_and_async_handlers(app: SocketServer, opened: Any) -> None:
    """Frames from one client are handled in the order sent, even behind async handlers."""
    client = await opened(app.test_url)
    await client.join("/chat")
    for i in range(30):
        await client.send("slow add" if i % 3 == 0 else "add", [i], "/chat", id=i)
    ids = [(await client.expect("ack"))["id"] for _ in range(30)]
    assert ids == list(range(30))


async def test_message_and_json_events(app: SocketServer, opened: Any) -> None:
    """send() emits 'message', send(json=True) emits 'json', as in Flask-SocketIO."""
    client = await opened(app.test_url)
    await client.join("/chat")
    await client.send("send plain", "hi", "/chat")
    assert (await client.expect("message"))["data"] == "hi"
    assert (await client.expect("json"))["data"] == "hi"


async def test_message_handler_receives_message_events(opened: Any) -> None:
    """on('message') receives 'message' events from clients."""
    socketio = SocketServer()

    @socketio.on("message")
    def on_message(data: Any) -> str:
        return f"got {data}"

    async with running(socketio) as url:
        client = await opened(url)
        assert (await client.call("message", "x"))["data"] == "got x"


async def test_catch_all_handler(opened: Any) -> None:
    """on('*') receives (event, data) for events without a handler of their own."""
    socketio = SocketServer()

    @socketio.on("*")
    def anything(event: str, data: Any) -> list[Any]:
        return [event, data]

    @socketio.on("known")
    def known(data: Any) -> str:
        return "known"

    async with running(socketio) as url:
        client = await opened(url)
        assert (await client.call("whatever", 7))["data"] == ["whatever", 7]
        assert (await client.call("known", 7, id=2))["data"] == "known"


async def test_class_based_namespace(opened: Any) -> None:
    """on_<event> methods of a registered Namespace are its handlers (spaces map to underscores)."""

    class Chat(Namespace):
        def on_connect(self, auth: Any) -> None:
            emit("welcome", request.sid)

        def on_my_event(self, data: Any) -> Any:
            return {"echo": data}

        async def on_later(self, data: Any) -> Any:
            self.emit("announced", data)
            return "done"

    socketio = SocketServer()
    socketio.register_namespace(Chat("/class"))
    async with running(socketio) as url:
        client = await opened(url)
        await client.join("/class")
        assert (await client.expect("welcome"))["data"] == client.sid
        assert (await client.call("my event", 1, "/class"))["data"] == {"echo": 1}
        assert (await client.call("my_event", 2, "/class", id=2))["data"] == {"echo": 2}
        await client.send("later", "x", "/class", id=3)
        assert (await client.expect("announced"))["data"] == "x"
        assert (await client.expect("ack"))["data"] == "done"


async def test_request_and_session_context(app: SocketServer, opened: Any) -> None:
    """request exposes the sid, namespace and address; session persists per client and namespace."""
    a, b = await opened(app.test_url), await opened(app.test_url)
    await a.join("/chat")
    await b.join("/chat")
    me = (await a.call("whoami", None, "/chat"))["data"]
    assert me == {"sid": a.sid, "namespace": "/chat", "address": "127.0.0.1"}
    await a.send("remember", "apple", "/chat")
    await b.send("remember", "pear", "/chat")
    assert (await a.call("recall", None, "/chat", id=2))["data"] == "apple"
    assert (await b.call("recall", None, "/chat", id=2))["data"] == "pear"


async def test_server_calls_client_and_gets_ack(app: SocketServer, opened: Any) -> None:
    """socketio.call() sends an id and returns the client's ack data."""
    client = await opened(app.test_url)
    await client.join("/chat")
    call = asyncio.ensure_future(app.call("question", "?", to=client.sid, namespace="/chat", timeout=5))
    frame = await client.expect("question", "/chat")
    assert isinstance(frame["id"], int)
    await client.send("ack", "answer", "/chat", id=frame["id"])
    assert await call == "answer"


async def test_server_call_times_out(app: SocketServer, opened: Any) -> None:
    """A call the client never acknowledges raises CallTimeoutError and leaves nothing pending."""
    client = await opened(app.test_url)
    await client.join("/chat")
    with pytest.raises(CallTimeoutError):
        await app.call("question", None, to=client.sid, namespace="/chat", timeout=0.2)
    assert app._connections[client.sid].pending == {}


async def test_server_call_fails_when_client_leaves(app: SocketServer, opened: Any) -> None:
    """A pending call raises ClientDisconnectedError when the client drops."""
    client = await opened(app.test_url)
    await client.join("/chat")
    call = asyncio.ensure_future(app.call("question", None, to=client.sid, namespace="/chat", timeout=10))
    await client.expect("question")
    client.abort()
    with pytest.raises(ClientDisconnectedError):
        await call


async def test_server_call_to_room_collects_replies(app: SocketServer, opened: Any) -> None:
    """A call to a room returns the acks received within the timeout (silent members left out)."""
    a, b, c = [await opened(app.test_url) for _ in range(3)]
    for client in (a, b, c):
        await client.join("/chat")
        await client.call("join", "poll", "/chat")
    call = asyncio.ensure_future(app.call("vote", None, to="poll", namespace="/chat", timeout=0.5))
    for client, answer in ((a, "yes"), (b, "no")):
        frame = await client.expect("vote")
        await client.send("ack", answer, "/chat", id=frame["id"])
    await c.expect("vote")  # c never answers
    assert sorted(await call) == ["no", "yes"]


async def test_server_call_from_inside_a_handler(opened: Any) -> None:
    """A handler may await a call to its own client: acks are read while it waits."""
    socketio = SocketServer()

    @socketio.on("confirm")
    async def confirm(data: Any) -> Any:
        answer = await socketio.call("sure?", data, to=request.sid, timeout=5)
        return {"confirmed": answer}

    async with running(socketio) as url:
        client = await opened(url)
        await client.send("confirm", "delete", id=1)
        question = await client.expect("sure?")
        await client.send("ack", "yes", id=question["id"])
        assert (await client.expect("ack"))["data"] == {"confirmed": "yes"}


# -- Errors --------------------------------------------------------------------------------------

MALFORMED = [
    ("not json", "invalid_json", "/", None),
    ("[1,2]", "invalid_envelope", "/", None),
    ('{"data":1}', "invalid_event", "/", None),
    ('{"event":"' + "e" * 300 + '","namespace":"/chat"}', "invalid_event", "/chat", None),
    ('{"event":"echo","namespace":"chat"}', "invalid_namespace", "/", None),
    ('{"event":"echo","namespace":"/chat","id":-1}', "invalid_id", "/chat", None),
    ('{"event":"echo","namespace":"/chat","data":NaN}', "not_strict_json", "/", None),
    ('{"event":"echo","namespace":"/chat","data":"\\ud800"}', "not_strict_json", "/", None),
    ('{"event":"e","data":' + "[" * 5000 + "]" * 5000 + "}", "too_deep", "/", None),
    ('{"event":"error","namespace":"/chat"}', "reserved_event", "/chat", None),
    ('{"event":"connect_error","namespace":"/chat","id":4}', "reserved_event", "/chat", 4),
    ('{"event":"ack","namespace":"/chat","id":999}', "unknown_ack", "/chat", None),
    ('{"event":"ack","namespace":"/chat"}', "unknown_ack", "/chat", None),
    ('{"event":"echo","namespace":"/elsewhere"}', "not_connected", "/elsewhere", None),
    ('{"event":"nobody listens","namespace":"/chat","id":5}', "unknown_event", "/chat", 5),
    ('{"event":"fail","namespace":"/chat","id":6}', "handler_error", "/chat", 6),
    ('{"event":"async fail","namespace":"/chat","id":7}', "handler_error", "/chat", 7),
]


@pytest.mark.parametrize(("frame", "code", "namespace", "id"), MALFORMED)
async def test_bad_frame_gets_error_and_connection_stays_usable(
    app: SocketServer, opened: Any, frame: str, code: str, namespace: str, id: int | None
) -> None:
    """Each bad frame gets an error event with its code (and id); the same socket keeps working."""
    client = await opened(app.test_url)
    await client.join("/chat")
    await client.send_raw(frame)
    error = await client.expect("error", namespace)
    assert error["data"]["code"] == code
    assert error.get("id") == id
    assert "Traceback" not in error["data"]["message"] and "secret" not in error["data"]["message"]
    assert (await client.call("add", [2, 2], "/chat", id=100))["data"] == 4


async def test_binary_frame_gets_error(app: SocketServer, opened: Any) -> None:
    """Binary frames are not part of v1: error event, connection stays open."""
    client = await opened(app.test_url)
    await client.send_raw(b"\x00\x01")
    assert (await client.expect("error"))["data"]["code"] == "binary_unsupported"
    await client.join("/chat")


async def test_oversized_frame_closes_1009(opened: Any) -> None:
    """A frame over max_message_size closes the connection with 1009."""
    socketio = SocketServer(max_message_size=1000)
    async with running(socketio) as url:
        client = await opened(url)
        await client.send_raw('{"event":"x","data":"' + "a" * 2000 + '"}')
        with pytest.raises(ConnectionClosed):
            await client.recv()
        assert client.ws.close_code == 1009


async def test_handler_exception_is_logged_with_traceback(
    app: SocketServer, opened: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The server log has the traceback; the client only a generic message."""
    client = await opened(app.test_url)
    await client.join("/chat")
    with caplog.at_level(logging.ERROR, logger="plainsocket"):
        frame = await client.call("fail", None, "/chat")
    assert frame["data"] == {"code": "handler_error", "message": "the event handler failed"}
    failures = [r for r in caplog.records if r.exc_info]
    assert failures and "secret internal detail" in str(failures[0].exc_info[1])


# -- Broadcasts and rooms -------------------------------------------------------------------------


async def test_broadcast_reaches_everyone_in_the_namespace(app: SocketServer, opened: Any) -> None:
    """broadcast=True reaches every client of the namespace, sender included; others not."""
    a, b, outside = [await opened(app.test_url) for _ in range(3)]
    await a.join("/chat")
    await b.join("/chat")
    await a.send("shout", "hey", "/chat")
    assert (await a.expect("shouted", "/chat"))["data"] == "hey"
    assert (await b.expect("shouted", "/chat"))["data"] == "hey"
    assert await outside.silent()


async def test_broadcast_without_self(app: SocketServer, opened: Any) -> None:
    """include_self=False skips the sender."""
    a, b = await opened(app.test_url), await opened(app.test_url)
    await a.join("/chat")
    await b.join("/chat")
    await a.send("shout others", "hey", "/chat")
    assert (await b.expect("shouted"))["data"] == "hey"
    assert await a.silent()


async def test_rooms_join_send_leave_close(app: SocketServer, opened: Any) -> None:
    """Room messages reach members only; leave and close take clients out."""
    a, b, c = [await opened(app.test_url) for _ in range(3)]
    for client in (a, b, c):
        await client.join("/chat")
    assert (await a.call("join", "r", "/chat"))["data"] == [a.sid, "r"]
    await b.call("join", "r", "/chat")
    await c.send("to room", {"room": "r", "text": "hi"}, "/chat")
    assert (await a.expect("room message"))["data"] == "hi"
    assert (await b.expect("room message"))["data"] == "hi"
    assert await c.silent()
    assert app.members("r", namespace="/chat") == sorted([a.sid, b.sid])
    assert (await a.call("leave", "r", "/chat", id=2))["data"] == [a.sid]
    await c.send("to room", {"room": "r", "text": "again"}, "/chat")
    assert (await b.expect("room message"))["data"] == "again"
    assert await a.silent()
    await c.send("close", "r", "/chat")
    await c.send("to room", {"room": "r", "text": "gone"}, "/chat")
    await c.call("add", [1], "/chat", id=3)  # the frames above were handled
    assert await b.silent()
    assert app.members("r", namespace="/chat") == []


async def test_server_emit_targets(app: SocketServer, opened: Any) -> None:
    """socketio.emit: everyone, a sid, a room, a list of rooms, skip_sid."""
    a, b, c = [await opened(app.test_url) for _ in range(3)]
    for client in (a, b, c):
        await client.join("/chat")
    app.enter_room(a.sid, "x", namespace="/chat")
    app.enter_room(b.sid, "y", namespace="/chat")
    assert app.emit("all", 1, namespace="/chat") == 3
    for client in (a, b, c):
        await client.expect("all")
    app.emit("one", 2, namespace="/chat", to=c.sid)
    assert (await c.expect("one"))["data"] == 2
    app.emit("rooms", 3, namespace="/chat", to=["x", "y"])
    await a.expect("rooms")
    await b.expect("rooms")
    app.emit("skip", 4, namespace="/chat", skip_sid=a.sid)
    await b.expect("skip")
    await c.expect("skip")
    assert await a.silent()
    assert await c.silent(0.05)


async def test_broadcast_order_is_kept_for_every_client(app: SocketServer, opened: Any) -> None:
    """Each client receives broadcasts in the order they were emitted."""
    clients = [await opened(app.test_url) for _ in range(5)]
    for client in clients:
        await client.join("/chat")
    for i in range(200):
        app.emit("n", i, namespace="/chat")
    for client in clients:
        assert [(await client.recv())["data"] for _ in range(200)] == list(range(200))


# -- Tracking and disconnects ---------------------------------------------------------------------


async def test_tracking_api(app: SocketServer, opened: Any) -> None:
    """sids, rooms, members and connection counts, per namespace."""
    a, b = await opened(app.test_url), await opened(app.test_url)
    await a.join("/chat")
    await a.call("join", "r", "/chat")
    assert app.connection_count() == 2
    assert app.connection_count("/") == 2
    assert app.connection_count("/chat") == 1
    assert app.sids("/chat") == [a.sid]
    assert app.rooms(a.sid, namespace="/chat") == [a.sid, "r"]
    assert app.rooms(b.sid, namespace="/chat") == []
    assert app.members("r", namespace="/chat") == [a.sid]


async def test_tracking_exact_after_abrupt_drops(app: SocketServer, opened: Any) -> None:
    """Aborted TCP connections leave no sid, room or connection behind."""
    clients = [await opened(app.test_url) for _ in range(20)]
    for client in clients:
        await client.join("/chat")
        await client.call("join", "shared", "/chat")
    for client in clients[:15]:
        client.abort()
    await until(lambda: app.connection_count() == 5)
    assert app.sids("/chat") == sorted(c.sid for c in clients[15:])
    assert app.members("shared", namespace="/chat") == sorted(c.sid for c in clients[15:])
    for client in clients[15:]:
        await client.close()
    await until(lambda: app.connection_count() == 0)
    assert app.registry.is_empty()
    assert app._per_address == {}


def reason_recorder(socketio: SocketServer, namespace: str = "/") -> list[str]:
    reasons: list[str] = []

    @socketio.on("disconnect", namespace=namespace)
    def record(reason: str) -> None:
        reasons.append(reason)

    return reasons


async def test_disconnect_reason_client_close(opened: Any) -> None:
    """A closing handshake from the client gives 'client disconnect'."""
    socketio = SocketServer()
    reasons = reason_recorder(socketio)
    async with running(socketio) as url:
        client = await opened(url)
        await client.close()
        await until(lambda: reasons == ["client disconnect"])


async def test_disconnect_reason_transport_close(opened: Any) -> None:
    """A dropped TCP connection gives 'transport close', once per namespace."""
    socketio = SocketServer()
    root, chat = reason_recorder(socketio), reason_recorder(socketio, "/chat")
    async with running(socketio) as url:
        client = await opened(url)
        await client.join("/chat")
        client.abort()
        await until(lambda: root == ["transport close"] and chat == ["transport close"])


async def test_disconnect_reason_ping_timeout() -> None:
    """A client that never answers pings is dropped with 'ping timeout'."""
    socketio = SocketServer(ping_interval=0.2, ping_timeout=0.3, close_timeout=0.5)
    reasons = reason_recorder(socketio)
    async with running(socketio):
        # A raw TCP client: completes the handshake, then never reads nor answers pings.
        sock = socket.create_connection(("127.0.0.1", socketio.port))
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        try:
            await until(lambda: socketio.connection_count() == 1)
            await until(lambda: reasons == ["ping timeout"], timeout=5)
            assert socketio.connection_count() == 0
        finally:
            sock.close()


async def test_server_disconnect_closes_with_4001(app: SocketServer, opened: Any) -> None:
    """socketio.disconnect(sid) closes the socket with 4001 and reason 'server disconnect'."""
    reasons = reason_recorder(app, "/chat")
    client = await opened(app.test_url)
    await client.join("/chat")
    app.disconnect(client.sid)
    with pytest.raises(ConnectionClosed):
        await client.recv()
    assert client.ws.close_code == 4001
    await until(lambda: reasons == ["server disconnect"])


async def test_server_disconnect_from_namespace(app: SocketServer, opened: Any) -> None:
    """disconnect() inside a handler leaves that namespace with a disconnect frame; socket stays."""
    reasons = reason_recorder(app, "/chat")
    client = await opened(app.test_url)
    await client.join("/chat")
    await client.send("kick me", None, "/chat")
    assert await client.expect("disconnect", "/chat")
    assert reasons == ["server disconnect"]
    assert app.sids("/chat") == []
    await client.join("/chat")


async def test_shutdown_closes_1001_and_runs_handlers_once(opened: Any) -> None:
    """shutdown(): every client gets 1001, every disconnect handler runs once with 'server shutdown'."""
    socketio = SocketServer()
    root, chat = reason_recorder(socketio), reason_recorder(socketio, "/chat")
    await socketio.start("127.0.0.1", 0)
    clients = [await opened(f"ws://127.0.0.1:{socketio.port}") for _ in range(10)]
    for client in clients[:4]:
        await client.join("/chat")
    await socketio.shutdown()
    for client in clients:
        with pytest.raises(ConnectionClosed):
            await client.recv()
        assert client.ws.close_code == 1001
    assert root == ["server shutdown"] * 10
    assert chat == ["server shutdown"] * 4
    assert socketio.registry.is_empty()


async def test_one_stalled_client_does_not_delay_others(opened: Any) -> None:
    """Broadcasting never waits for a client that stopped reading."""
    socketio = SocketServer()
    async with running(socketio) as url:
        reader = await opened(url)
        stalled = socket.create_connection(("127.0.0.1", socketio.port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        try:
            await until(lambda: socketio.connection_count() == 2)
            payload = "x" * 10_000
            for i in range(300):  # 3 MB: far more than the stalled socket's buffers hold
                socketio.emit("bulk", {"i": i, "p": payload})
            received = [(await reader.recv())["data"]["i"] for _ in range(300)]
            assert received == list(range(300))
        finally:
            stalled.close()


# -- HTTP on the same port -------------------------------------------------------------------------


def http_headers(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.headers


def http_get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


async def test_http_pages_and_health(app: SocketServer, opened: Any) -> None:
    """GET / serves the page, /client.js the library, /healthz JSON with the connection count."""
    await opened(app.test_url)
    base = f"http://127.0.0.1:{app.port}"
    status, content_type, body = await asyncio.to_thread(http_get, base + "/")
    assert status == 200 and content_type.startswith("text/html") and "<html" in body.lower()
    status, content_type, body = await asyncio.to_thread(http_get, base + "/client.js")
    assert status == 200 and "javascript" in content_type and "export" in body
    cross_site = await asyncio.to_thread(http_headers, base + "/client.js")
    assert cross_site["Access-Control-Allow-Origin"] == "*", "importable from any page"
    status, content_type, body = await asyncio.to_thread(http_get, base + "/healthz")
    assert status == 200 and content_type == "application/json"
    health = json.loads(body)
    assert health["status"] == "ok" and health["connections"] == 1
    status, _, _ = await asyncio.to_thread(http_get, base + "/nope")
    assert status == 404


async def test_leaving_with_an_async_handler_then_closing_leaves_nothing(opened: Any) -> None:
    """A disconnect handler cut short by the socket closing still takes the client out of the registry."""
    socketio = SocketServer()
    started = asyncio.Event()

    @socketio.on("disconnect", namespace="/slow")
    async def slow_goodbye(reason: str) -> None:
        started.set()
        await asyncio.sleep(30)

    socketio.on_event("connect", lambda: None, namespace="/slow")
    async with running(socketio) as url:
        client = await opened(url)
        await client.join("/slow")
        await client.send("disconnect", None, "/slow")
        await started.wait()
        await client.close()
        await until(lambda: socketio.connection_count() == 0)
        assert socketio.registry.is_empty()


async def test_frames_after_a_server_close_are_not_handled(opened: Any) -> None:
    """Once the server closes a socket (a kick), what the client still sends reaches no handler."""
    socketio = SocketServer()
    calls: list[Any] = []
    socketio.on_event("note", calls.append)
    async with running(socketio) as url:
        client = await opened(url)
        socketio.disconnect(client.sid)
        for i in range(5):
            await client.send("note", i)
        with pytest.raises(ConnectionClosed):
            while True:
                await client.recv()
        assert calls == []


async def test_broadcast_reaches_compressed_and_plain_clients(opened: Any) -> None:
    """With compression on, a broadcast reaches clients with and without permessage-deflate."""
    socketio = SocketServer(compression=True)
    async with running(socketio) as url:
        deflating = await opened(url, compression="deflate")
        plain = await opened(url, compression=None)
        assert deflating.ws.protocol.extensions and not plain.ws.protocol.extensions
        for i in range(3):
            socketio.emit("news", {"i": i, "text": "x" * 500})
        for client in (deflating, plain):
            assert [(await client.expect("news"))["data"]["i"] for _ in range(3)] == [0, 1, 2]
