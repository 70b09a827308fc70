"""The owner RPC without Redis or an event loop: the bytes on the wire, the asker's decisions after
each reply and timeout, the owner's memory of requests served, and malformed messages."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from realtime.cluster.rpc import (
    REMEMBERED,
    Ack,
    Answered,
    CheckLease,
    Error,
    Failed,
    MalformedMessage,
    NotOwner,
    Ok,
    PendingCall,
    Request,
    Retry,
    ServedRequests,
    Wait,
    decode_reply,
    decode_request,
    encode_reply,
)
from realtime.core.errors import INTERNAL, ApiError

ACK_S, LEASE_S = 5.0, 1.0


def pending(op: str = "exec", *, idempotent: bool = False, deadline: float = 100.0) -> PendingCall:
    call = PendingCall("demo", op, idempotent=idempotent, deadline=deadline)
    call.published()
    return call


def failure(decision: Any) -> ApiError:
    assert isinstance(decision, Failed), decision
    return decision.error


# -- the wire ---------------------------------------------------------------------------------------


def test_messages_encode_to_the_bytes_every_instance_exchanges() -> None:
    """Requests and each kind of reply keep the deployment's wire format, key order included."""
    request = Request("a:1", "read", {"path": "x.txt"}, "p:reply:a")
    assert request.encode() == b'{"id":"a:1","op":"read","args":{"path":"x.txt"},"reply":"p:reply:a"}'
    assert encode_reply(Ack("a:1", "b")) == b'{"id":"a:1","type":"ack","owner":"b"}'
    assert encode_reply(Ok("a:1", {"n": 1})) == b'{"id":"a:1","type":"ok","result":{"n":1}}'
    assert encode_reply(NotOwner("a:1")) == b'{"id":"a:1","type":"not_owner"}'
    assert encode_reply(Error.of("a:1", ApiError(404, "not_found", "no such file"))) == (
        b'{"id":"a:1","type":"error","code":"not_found","message":"no such file","status":404}'
    )


def test_an_internal_error_is_sent_as_the_api_body_with_its_status() -> None:
    """A bug on the owner reaches the asker as `INTERNAL`, nothing of its details."""
    sent = orjson.loads(encode_reply(Error.of("a:1", INTERNAL)))
    assert sent == {"id": "a:1", "type": "error", **INTERNAL.body()["error"], "status": 500}


@pytest.mark.parametrize(
    "reply", [Ack("a:1", "b"), Ok("a:1", {"files": [], "n": None}), NotOwner("a:1"), Error("a:1", 409, "busy", "x")]
)
def test_replies_decode_to_what_was_encoded(reply: Any) -> None:
    """Every reply survives the trip."""
    assert decode_reply(encode_reply(reply)) == reply


def test_a_request_decodes_to_what_was_encoded() -> None:
    """A request survives the trip, its arguments untouched."""
    request = Request("a:1", "write", {"files": [["x", "aGk="]], "request_id": "r"}, "p:reply:a")
    assert decode_request(request.encode()) == request


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'{"type": "ok", "result": {}}',
        b'{"id": 7, "type": "ok", "result": {}}',
        b'{"id": "a:1"}',
        b'{"id": "a:1", "type": "done"}',
        b'{"id": "a:1", "type": "ack"}',
        b'{"id": "a:1", "type": "ok", "result": [1]}',
        b'{"id": "a:1", "type": "error", "status": "500", "code": "x", "message": "m"}',
        b'{"id": "a:1", "type": "error", "status": true, "code": "x", "message": "m"}',
        b'{"id": "a:1", "type": "error", "status": 500, "code": "x"}',
    ],
)
def test_malformed_replies_are_refused(payload: bytes) -> None:
    """Anything but a well-formed reply is `MalformedMessage` (logged and dropped by the receiver)."""
    with pytest.raises(MalformedMessage):
        decode_reply(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b'"exec"',
        b'{"op": "exec", "args": {}, "reply": "r"}',
        b'{"id": "a:1", "args": {}, "reply": "r"}',
        b'{"id": "a:1", "op": "exec", "reply": "r"}',
        b'{"id": "a:1", "op": "exec", "args": [], "reply": "r"}',
        b'{"id": "a:1", "op": "exec", "args": {}}',
        b'{"id": "a:1", "op": null, "args": {}, "reply": "r"}',
    ],
)
def test_malformed_requests_are_refused(payload: bytes) -> None:
    """A request missing a field, or with one of the wrong type, is `MalformedMessage`."""
    with pytest.raises(MalformedMessage):
        decode_request(payload)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["id", "type", "owner", "result", "status", "code", "message", "op", "args", "reply", "x"]), inner, max_size=6),
    max_leaves=12,
)


@given(JSON | st.binary(max_size=32))
def test_decoding_anything_answers_a_message_or_malformed(value: Any) -> None:
    """Whatever arrives on a channel, decoding raises nothing but `MalformedMessage`."""
    payload = value if isinstance(value, bytes) else orjson.dumps(value)
    for decode in (decode_reply, decode_request):
        with contextlib.suppress(MalformedMessage):
            decode(payload)


# -- the asker ------------------------------------------------------------------------------------


def test_an_acknowledged_call_waits_for_its_result() -> None:
    """After the ack the asker waits a lease's length at a time, and the result ends the call."""
    call = pending()
    assert call.patience(ACK_S, LEASE_S) == ACK_S
    assert call.receive(Ack("a:1", "b")) == Wait()
    assert call.owner == "b"
    assert call.patience(ACK_S, LEASE_S) == LEASE_S
    assert call.receive(Ok("a:1", {"exit_code": 0})) == Answered({"exit_code": 0})


def test_a_refusal_is_raised_as_the_owner_raised_it() -> None:
    """An `error` reply becomes the same `ApiError` on the asker."""
    error = failure(pending().receive(Error("a:1", 404, "not_found", "nope")))
    assert (error.status, error.code, error.message) == (404, "not_found", "nope")


def test_no_ack_in_time_sends_the_request_again() -> None:
    """Without an acknowledgement, a timeout means: publish again (the id stays, so it runs once)."""
    call = pending()
    assert call.timed_out() == Retry()


def test_not_owner_sends_the_request_again() -> None:
    """An instance that gave the project up answers `not_owner`: ask again."""
    call = pending()
    assert call.receive(NotOwner("a:1")) == Retry()


def test_after_an_ack_a_timeout_looks_up_the_lease_and_waits_while_the_owner_holds_it() -> None:
    """A slow op is waited for as long as its owner still holds the project's lease."""
    call = pending()
    call.receive(Ack("a:1", "b"))
    assert call.timed_out() == CheckLease("b")
    assert call.lease_holder("b") == Wait()


@pytest.mark.parametrize("holder", [None, "c"])
def test_an_idempotent_op_whose_owner_is_gone_is_sent_again(holder: str | None) -> None:
    """The owner lost its lease (nobody, or someone else, holds it): an idempotent op is asked again."""
    call = pending("read", idempotent=True)
    call.receive(Ack("a:1", "b"))
    assert call.lease_holder(holder) == Retry()


@pytest.mark.parametrize("holder", [None, "c"])
def test_an_op_that_is_not_idempotent_fails_with_owner_lost(holder: str | None) -> None:
    """An exec whose owner is gone may have run: the asker is told `owner_lost` (503), never runs it again."""
    call = pending("exec", idempotent=False)
    call.receive(Ack("a:1", "b"))
    error = failure(call.lease_holder(holder))
    assert (error.status, error.code) == (503, "owner_lost")
    assert "instance b" in error.message and "exec" in error.message


def test_publishing_again_forgets_the_previous_ack() -> None:
    """Each publication waits for its own acknowledgement."""
    call = pending()
    call.receive(Ack("a:1", "b"))
    call.published()
    assert call.owner is None
    assert call.timed_out() == Retry()


def test_past_the_deadline_the_call_gives_up_saying_whether_an_owner_heard_it() -> None:
    """Nobody could take the project over, or an owner heard the op and never answered: both 503."""
    quiet = PendingCall("demo", "exec", idempotent=False, deadline=10.0)
    assert quiet.expired(10.0) is None
    error = quiet.expired(10.5)
    assert error is not None and (error.status, error.code) == (503, "unavailable")
    assert "no instance could take" in error.message

    unanswered = pending(deadline=10.0)
    unanswered.timed_out()
    error = unanswered.expired(11.0)
    assert error is not None and (error.status, error.code) == (503, "unavailable")
    assert "did not answer" in error.message


# -- the owner --------------------------------------------------------------------------------------


def test_a_repeated_request_is_recognised_and_answered_from_memory() -> None:
    """The second take of an id is not a first: the owner replies with what the first run answered."""
    served = ServedRequests()
    first, is_first = served.take("a:1")
    assert is_first and first.reply is None
    first.reply = encode_reply(Ok("a:1", {"n": 1}))
    again, is_first = served.take("a:1")
    assert not is_first
    assert again is first and again.reply == first.reply
    assert served.take("a:2")[1]


def test_the_memory_is_bounded_forgetting_the_oldest() -> None:
    """Past `REMEMBERED` ids the oldest is forgotten (then it would run again); the newest are kept."""
    served = ServedRequests()
    for n in range(REMEMBERED + 1):
        served.take(f"a:{n}")
    assert len(served) == REMEMBERED
    assert not served.take(f"a:{REMEMBERED}")[1]
    assert not served.take("a:1")[1]
    assert served.take("a:0")[1]


def test_the_memory_needs_room_for_one() -> None:
    """A memory of nothing could not deduplicate anything: refused."""
    with pytest.raises(ValueError, match="at least 1"):
        ServedRequests(0)


def test_remembered_replies_are_bounded_in_bytes_keeping_the_newest() -> None:
    """Past `max_bytes` of replies the oldest requests are forgotten; the newest reply stays, however big."""
    memory = ServedRequests(limit=10, max_bytes=100)
    for n in range(3):
        served, first = memory.take(f"c{n}")
        assert first
        memory.answer(f"c{n}", served, b"x" * 40)
    assert len(memory) == 2 and memory.reply_bytes == 80 and "c0" not in memory
    big, _ = memory.take("big")
    memory.answer("big", big, b"y" * 500)
    assert "big" in memory and "c1" not in memory and "c2" not in memory
    assert memory.reply_bytes == 500
    again, first = memory.take("big")
    assert not first and again.reply == b"y" * 500
