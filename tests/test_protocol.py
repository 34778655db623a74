"""protocol.py: every frame is a valid envelope or a typed ProtocolError, nothing else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plainsocket.protocol import MAX_ID, Envelope, ProtocolError, decode, encode, error_frame

VALID = [
    ('{"event":"my event"}', Envelope("my event")),
    ('{"event":"e","namespace":"/test","data":{"data":"hi"}}', Envelope("e", "/test", {"data": "hi"})),
    ('{"event":"e","id":0}', Envelope("e", id=0)),
    (f'{{"event":"e","id":{MAX_ID}}}', Envelope("e", id=MAX_ID)),
    ('{"event":"e","data":[1,2.5,null,true,"x"],"extra":1}', Envelope("e", data=[1, 2.5, None, True, "x"])),
    ('{"event":"' + "x" * 256 + '"}', Envelope("x" * 256)),
    ('{"event":"e","data":"\\ud83d\\ude00"}', Envelope("e", data="\U0001f600")),  # a valid surrogate pair
    # Integers stay exact past 64 bits (orjson would make floats of them), floats stay floats.
    ('{"event":"e","data":[9223372036854775807,18446744073709551615]}', Envelope("e", data=[2**63 - 1, 2**64 - 1])),
    ('{"event":"e","data":[18446744073709551616,-9223372036854775809]}', Envelope("e", data=[2**64, -(2**63) - 1])),
    (
        '{"event":"e","data":[123456789012345678901234567890,1.5e308,-0.0,1E2]}',
        Envelope("e", data=[123456789012345678901234567890, 1.5e308, -0.0, 100.0]),
    ),
    ('{"event":"e","data":"0000000000000000000000"}', Envelope("e", data="0" * 22)),
    (' \t\n{"event":"e"}\r\n ', Envelope("e")),
    # The envelope counts as one level: 31 more are allowed by default.
    ('{"event":"e","data":' + "[" * 31 + "]" * 31 + "}", Envelope("e", data=json.loads("[" * 31 + "]" * 31))),
]

INVALID = [
    ("hello", "invalid_json"),
    ("", "invalid_json"),
    ("{", "invalid_json"),
    ("[1]", "invalid_envelope"),
    ('"event"', "invalid_envelope"),
    ("null", "invalid_envelope"),
    ("{}", "invalid_event"),
    ('{"event":""}', "invalid_event"),
    ('{"event":5}', "invalid_event"),
    ('{"event":{"x":1}}', "invalid_event"),
    ('{"event":"' + "x" * 257 + '"}', "invalid_event"),
    ('{"event":"e","namespace":"test"}', "invalid_namespace"),
    ('{"event":"e","namespace":5}', "invalid_namespace"),
    ('{"event":"e","namespace":null}', "invalid_namespace"),
    ('{"event":"e","namespace":"/' + "x" * 300 + '"}', "invalid_namespace"),
    ('{"event":"e","id":-1}', "invalid_id"),
    ('{"event":"e","id":1.5}', "invalid_id"),
    ('{"event":"e","id":"1"}', "invalid_id"),
    ('{"event":"e","id":true}', "invalid_id"),
    (f'{{"event":"e","id":{MAX_ID + 1}}}', "invalid_id"),
    ('{"event":"e","data":NaN}', "not_strict_json"),
    ('{"event":"e","data":Infinity}', "not_strict_json"),
    ('{"event":"e","data":-Infinity}', "not_strict_json"),
    ('{"event":"e","data":1e999}', "not_strict_json"),
    ('{"event":"e","data":-1E400}', "not_strict_json"),
    ('{"event":"e"} x', "invalid_json"),
    ('{"event":"e",}', "invalid_json"),
    ('{"event":"e\x01"}', "invalid_json"),
    ('{"event":"e","data":"\\ud800"}', "not_strict_json"),
    ('{"event":"\\udfff"}', "not_strict_json"),
    ('{"event":"e","data":{"\\ud800":1}}', "not_strict_json"),
    ('{"event":"e","data":' + "9" * 5000 + "}", "not_strict_json"),
    ('{"event":"e","data":' + "[" * 32 + "]" * 32 + "}", "too_deep"),
    ('{"event":"e","data":' + '{"a":' * 40 + "1" + "}" * 40 + "}", "too_deep"),
    ("[" * 100_000 + "]" * 100_000, "too_deep"),
    ('{"event":"e","data":' + "[" * 100_000 + "]" * 100_000 + "}", "too_deep"),
]


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_decode_valid(text: str, expected: Envelope) -> None:
    """Valid frames decode to the envelope they describe, with defaults filled in."""
    assert decode(text) == expected


@pytest.mark.parametrize(("text", "code"), INVALID)
def test_decode_invalid(text: str, code: str) -> None:
    """Every malformed frame raises ProtocolError with its machine code."""
    with pytest.raises(ProtocolError) as caught:
        decode(text)
    assert caught.value.code == code
    assert caught.value.message


def test_error_keeps_namespace_and_id() -> None:
    """An error about a readable frame names its namespace and ack id."""
    with pytest.raises(ProtocolError) as caught:
        decode('{"event":"","namespace":"/chat","id":4}')
    assert (caught.value.namespace, caught.value.id) == ("/chat", 4)
    assert json.loads(error_frame(caught.value)) == {
        "event": "error",
        "namespace": "/chat",
        "data": {"code": "invalid_event", "message": "event must be a non-empty string"},
        "id": 4,
    }


def test_depth_limit_is_configurable() -> None:
    """max_depth moves the nesting limit."""
    text = '{"event":"e","data":' + "[" * 5 + "]" * 5 + "}"
    assert decode(text, max_depth=6).data == [[[[[]]]]]
    with pytest.raises(ProtocolError):
        decode(text, max_depth=5)


def test_event_length_is_configurable() -> None:
    """max_event_length lowers the event name limit."""
    with pytest.raises(ProtocolError) as caught:
        decode('{"event":"abcdef"}', max_event_length=5)
    assert caught.value.code == "invalid_event"


def test_envelope_validates_when_built() -> None:
    """An invalid envelope can not be constructed."""
    for bad in (lambda: Envelope(""), lambda: Envelope("e", "nope"), lambda: Envelope("e", id=-3)):
        with pytest.raises(ProtocolError):
            bad()


def test_encode_is_compact_strict_json() -> None:
    """encode writes compact JSON, keeps non-ASCII text, refuses NaN."""
    assert encode("my response", {"data": "é"}, "/test") == (
        '{"event":"my response","namespace":"/test","data":{"data":"é"}}'
    )
    assert encode("ack", 1, "/", 9) == '{"event":"ack","namespace":"/","data":1,"id":9}'
    with pytest.raises(ValueError):
        encode("e", float("nan"))
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(ValueError):
        encode("e", cycle)
    with pytest.raises(TypeError):
        encode("e", {"data": object()})


def test_envelope_is_immutable() -> None:
    """A decoded envelope can not be changed after validation."""
    envelope = decode('{"event":"e","id":3}')
    with pytest.raises(AttributeError):
        envelope.id = -1  # type: ignore[misc]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
events = st.text(min_size=1, max_size=256).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s))
namespaces = (
    st.text(max_size=30).map(lambda s: "/" + s).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s))
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_an_envelope_or_a_protocol_error(text: str) -> None:
    """Arbitrary text never raises anything but ProtocolError."""
    try:
        decode(text)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "event": st.one_of(events, json_values),
            "namespace": st.one_of(namespaces, json_values),
            "data": json_values,
            "id": st.one_of(st.integers(-5, MAX_ID + 5), json_values),
        },
    )
)
def test_any_json_object_is_an_envelope_or_a_protocol_error(obj: dict) -> None:
    """Objects with any field types never raise anything but ProtocolError."""
    try:
        decode(json.dumps(obj))
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_utf8_bytes_are_an_envelope_or_a_protocol_error(raw: bytes) -> None:
    """Whatever bytes decode as UTF-8 text, decode() answers with an envelope or a ProtocolError."""
    text = raw.decode("utf-8", errors="replace")
    try:
        decode(text)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(events, namespaces, json_values, st.none() | st.integers(0, MAX_ID))
def test_encode_decode_round_trip(event: str, namespace: str, data: object, id: int | None) -> None:
    """decode(encode(...)) gives back the same envelope."""
    assert decode(encode(event, data, namespace, id)) == Envelope(event, namespace, data, id)


def test_the_frame_checker_at_the_top_of_the_repository() -> None:
    """python protocol.py prints each frame as read, or the error frame the server would send; exit 1 if any is bad."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    ran = subprocess.run(
        [sys.executable, "protocol.py"],
        cwd=root,
        input='{"event":"my event","namespace":"/test","id":7}\n{"event":""}\nnot json\n',
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = ran.stdout.splitlines()
    assert ran.returncode == 1 and len(lines) == 3
    assert lines[0] == 'ok     {"event":"my event","namespace":"/test","data":null,"id":7}'
    assert lines[1].startswith("error ") and '"code":"invalid_event"' in lines[1]
    assert '"code":"invalid_json"' in lines[2]
