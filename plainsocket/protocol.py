"""The plainsocket envelope: parse, validate and encode frames. Pure: no I/O.

Every WebSocket text frame carries one JSON object (docs/protocol.md)::

    {"event": "my event", "namespace": "/test", "data": {"data": "hi"}, "id": 7}

- ``event``: string of 1..256 characters, required;
- ``namespace``: string starting with ``/``, default ``"/"``;
- ``data``: any JSON value, default ``null``;
- ``id``: integer in 0..2**53-1, optional: the sender wants an acknowledgement.

One kind of examples per reserved event::

    {"event":"connect","namespace":"/","data":{"sid":"Zk3s","protocol":1}}
    {"event":"connect_error","namespace":"/admin","data":{"message":"unknown namespace"}}
    {"event":"disconnect","namespace":"/test"}
    {"event":"ack","namespace":"/test","id":7,"data":"ok"}
    {"event":"error","namespace":"/","data":{"code":"invalid_json","message":"..."}}
    {"event":"heartbeat"}

Exceptions: :func:`decode` raises :class:`ProtocolError` for every way a frame can be wrong.
Any other exception escaping :func:`decode` is a bug.
"""

from __future__ import annotations

import json
import math
import re
import sys
from enum import IntEnum
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any, NamedTuple

import orjson

PROTOCOL_VERSION = 1
DEFAULT_NAMESPACE = "/"
MAX_EVENT_LENGTH = 256
MAX_NAMESPACE_LENGTH = 256
MAX_DEPTH = 32
MAX_ID = 2**53 - 1  # the largest integer a JavaScript client can hold exactly

CONNECT = "connect"
CONNECT_ERROR = "connect_error"
DISCONNECT = "disconnect"
ERROR = "error"
ACK = "ack"
HEARTBEAT = "heartbeat"
RESERVED_EVENTS = frozenset({CONNECT, CONNECT_ERROR, DISCONNECT, ERROR, ACK, HEARTBEAT})


class CloseCode(IntEnum):
    """WebSocket close codes the server uses (table in docs/protocol.md)."""

    NORMAL = 1000
    SHUTDOWN = 1001  # RFC 6455 7.4.1 "going away" (a browser closing its tab sends it too)
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # RFC 6455 7.4.1 via IANA: the server restarts, reconnect
    SLOW_CONSUMER = 4000
    SERVER_DISCONNECT = 4001
    TOO_MANY_CONNECTIONS = 4002
    UNSUPPORTED_PROTOCOL = 4010


class ProtocolError(Exception):
    """A frame the server can not accept: the peer's fault, reported with an ``error`` event.

    Attributes:
        code: a short machine-readable code, e.g. ``invalid_json``.
        message: human text, safe to send to the client.
        namespace: the frame's namespace when it could be read, else ``"/"``.
        id: the frame's acknowledgement id when it could be read.
    """

    def __init__(self, code: str, message: str, *, namespace: str = DEFAULT_NAMESPACE, id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.namespace = namespace
        self.id = id


class _Fields(NamedTuple):
    event: str
    namespace: str = DEFAULT_NAMESPACE
    data: Any = None
    id: int | None = None


class Envelope(_Fields):
    """One frame, validated when built: an invalid envelope can not exist. Immutable.

    A named tuple rather than a frozen dataclass: one is built for every frame received, and
    a tuple costs a fifth of the time to build.
    """

    __slots__ = ()

    def __new__(
        cls, event: str, namespace: str = DEFAULT_NAMESPACE, data: Any = None, id: int | None = None
    ) -> Envelope:
        namespace = _check_namespace(namespace)
        # The length limit is decode()'s to apply: the server may configure another one.
        _check_event(event, namespace, max_length=sys.maxsize)
        if id is not None:
            _check_id(id, namespace)
        return _new_envelope(cls, (event, namespace, data, id))


_new_envelope = tuple.__new__  # for fields decode() has already checked


def decode(text: str, *, max_depth: int = MAX_DEPTH, max_event_length: int = MAX_EVENT_LENGTH) -> Envelope:
    """Parse one text frame into an :class:`Envelope`.

    Raises:
        ProtocolError: for any frame that is not a valid, strict-JSON envelope.
    """
    obj = parse_json(text, max_depth)
    if type(obj) is not dict:
        raise ProtocolError("invalid_envelope", "frame must be a JSON object")
    namespace = obj.get("namespace", DEFAULT_NAMESPACE)
    if type(namespace) is not str or not namespace.startswith("/") or len(namespace) > MAX_NAMESPACE_LENGTH:
        _check_namespace(namespace)  # raises, with the reason
    id = obj.get("id")
    if id is not None:
        _check_id(id, namespace)
    event = obj.get("event")
    if type(event) is not str or not event or len(event) > max_event_length:
        _check_event(event, namespace, id, max_event_length)  # raises, with the reason
    return _new_envelope(Envelope, (event, namespace, obj.get("data"), id))


def encode(
    event: str,
    data: Any = None,
    namespace: str = DEFAULT_NAMESPACE,
    id: int | None = None,
    offset: str | None = None,
) -> str:
    """Encode one outgoing envelope as compact, strict JSON.

    ``offset`` (connection state recovery, docs/protocol.md) is always the last field, so
    that a recorded frame can be found by the suffix :func:`offset_suffix` gives.

    Raises:
        TypeError: ``data`` holds something JSON can not represent.
        ValueError: ``data`` holds NaN or an infinity.
    """
    envelope: dict[str, Any] = {"event": event, "namespace": namespace, "data": data}
    if id is not None:
        envelope["id"] = id
    if offset is not None:
        envelope["offset"] = offset
    return _dumps(envelope)


def offset_suffix(offset: str) -> bytes:
    """Return how a frame encoded with ``offset`` ends."""
    return f',"offset":"{offset}"}}'.encode()


def valid_offset(text: str) -> bool:
    """Tell whether ``text`` has the shape of an offset this server hands out."""
    return 0 < len(text) <= 64 and _OFFSET.fullmatch(text) is not None


def encode_error(code: str, message: str, namespace: str = DEFAULT_NAMESPACE, id: int | None = None) -> str:
    """Encode an ``error`` event."""
    return encode(ERROR, {"code": code, "message": message}, namespace, id)


def error_frame(error: ProtocolError) -> str:
    """Encode the ``error`` event that answers a :class:`ProtocolError`."""
    return encode_error(error.code, error.message, error.namespace, error.id)


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
# json's C encoder, built once: JSONEncoder.encode builds one for every call. Without the
# markers dict (its cycle check, which could not be shared across threads) a cycle ends in
# RecursionError, reported as the ValueError JSONEncoder raises for it.
_c_encode = c_make_encoder and c_make_encoder(
    None, _ENCODER.default, encode_basestring, None, ":", ",", False, False, False
)


def _dumps(envelope: dict[str, Any]) -> str:
    if _c_encode is None:  # a Python without json's C accelerator
        return _ENCODER.encode(envelope)
    try:
        return "".join(_c_encode(envelope, 0))
    except RecursionError:
        raise ValueError("data is nested too deeply or refers to itself") from None


def _reject_constant(name: str) -> Any:
    raise ProtocolError("not_strict_json", f"{name} is not strict JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e999, or a long literal: JSON has no infinity
        raise ProtocolError("not_strict_json", "number out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_OFFSET = re.compile(r"[A-Za-z0-9_-]+")
# A \u escape of a UTF-16 surrogate is the only way a lone surrogate gets into decoded text:
# websockets already refuses frames that are not valid UTF-8 (close 1007).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json(text: str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse strict JSON no deeper than ``max_depth``.

    orjson parses, about five times faster than json. It refuses everything json's strict
    settings refuse (NaN, infinities, lone surrogates, control characters, trailing data),
    so that its refusal only sends the text to :func:`_strict_parse` for the reason; what it
    accepts, json accepts with the same value, except an integer past 64 bits (19 digits or
    more, when negative), which orjson turns into a float: json parses a text with a run of
    19 digits. A translation finds one faster than a regular expression.

    Raises:
        ProtocolError: ``invalid_json``, ``not_strict_json`` or ``too_deep``.
    """
    if text.encode().translate(_DIGITS_AS_ZEROS).find(_NINETEEN_DIGITS) == -1:  # not `in`: it raises inside
        try:
            obj = orjson.loads(text)
        except (ValueError, RecursionError):
            obj = _strict_parse(text, max_depth)
    else:
        obj = _strict_parse(text, max_depth)
    # The bracket count bounds the depth: only walk the tree when it could be too deep.
    if text.count("[") + text.count("{") > max_depth and _depth(obj) > max_depth:
        raise ProtocolError("too_deep", f"nesting deeper than {max_depth} levels")
    return obj


_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS = b"0" * 19


def _strict_parse(text: str, max_depth: int) -> Any:
    try:
        obj = _decoder.decode(text)
    except ProtocolError:
        raise
    except RecursionError:
        # json raises RecursionError, not ValueError, near 1,000 levels.
        raise ProtocolError("too_deep", f"nesting deeper than {max_depth} levels") from None
    except json.JSONDecodeError:
        raise ProtocolError("invalid_json", "frame is not valid JSON") from None
    except ValueError:
        # Integers past sys.get_int_max_str_digits() (4,300 digits by default).
        raise ProtocolError("not_strict_json", "integer too long") from None
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(obj):
        raise ProtocolError("not_strict_json", "lone UTF-16 surrogate in a string")
    return obj


def _depth(obj: Any) -> int:
    """Return the nesting depth of a decoded value (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(obj, 0)]
    while stack:
        value, level = stack.pop()
        if type(value) is dict:
            value = value.values()
        elif type(value) is not list:
            continue
        level += 1
        deepest = max(deepest, level)
        stack.extend((child, level) for child in value)
    return deepest


def _has_lone_surrogate(obj: Any) -> bool:
    stack = [obj]
    while stack:
        value = stack.pop()
        if type(value) is str:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif type(value) is list:
            stack.extend(value)
        elif type(value) is dict:
            stack.extend(value.keys())
            stack.extend(value.values())
    return False


def _check_namespace(namespace: Any) -> str:
    if type(namespace) is not str or not namespace.startswith("/"):
        raise ProtocolError("invalid_namespace", "namespace must be a string starting with '/'")
    if len(namespace) > MAX_NAMESPACE_LENGTH:
        raise ProtocolError("invalid_namespace", f"namespace longer than {MAX_NAMESPACE_LENGTH} characters")
    return namespace


def _check_event(event: Any, namespace: str, id: int | None = None, max_length: int = MAX_EVENT_LENGTH) -> None:
    if type(event) is not str or not event:
        raise ProtocolError("invalid_event", "event must be a non-empty string", namespace=namespace, id=id)
    if len(event) > max_length:
        raise ProtocolError("invalid_event", f"event longer than {max_length} characters", namespace=namespace, id=id)


def _check_id(id: Any, namespace: str) -> None:
    if type(id) is not int or not 0 <= id <= MAX_ID:
        raise ProtocolError("invalid_id", f"id must be an integer from 0 to {MAX_ID}", namespace=namespace)
