"""The demo's request limits (demo_limits.RequestLimits) in process, in front of a stand-in for gradio
that reads the whole body: whatever the chunking, a body within the limits reaches the app
unchanged, and one over a limit is answered 413 (400 for a boundary python-multipart refuses)
before the app answers. tests/test_demo.py checks the same against the served page."""
import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import need_extra

import demo

demo_limits = need_extra("demo_limits")  # python-multipart and starlette: requirements-demo.txt
pytestmark = pytest.mark.extra

BOUNDARY = b"npr-boundary"


def part(name, data, filename=None, extra_header=b""):
    disposition = b'form-data; name="' + name + b'"' + (b'; filename="' + filename + b'"' if filename else b"")
    return b"--" + BOUNDARY + b"\r\nContent-Disposition: " + disposition + b"\r\n" + extra_header + b"\r\n" + data + b"\r\n"


def body_of(*parts):
    return b"".join(parts) + b"--" + BOUNDARY + b"--\r\n"


def serve(body, chunks, ctype=b"multipart/form-data; boundary=" + BOUNDARY, declare=False):
    """(status sent, bytes the app read) for ``body`` sent in pieces cut at ``chunks``."""
    cuts = sorted({0, len(body), *(c % (len(body) + 1) for c in chunks)})
    pieces = [body[a:b] for a, b in zip(cuts, cuts[1:])] or [b""]
    read, sent = [], []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            read.append(message["body"])
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main():
        queue = iter(pieces)

        async def receive():
            piece = next(queue, None)
            if piece is None:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": piece, "more_body": piece is not pieces[-1]}

        async def send(message):
            sent.append(message)
        headers = [(b"content-type", ctype)] + ([(b"content-length", str(len(body)).encode())] if declare else [])
        await demo_limits.RequestLimits(app)({"type": "http", "headers": headers}, receive, send)

    asyncio.run(main())
    statuses = [m["status"] for m in sent if m["type"] == "http.response.start"]
    assert len(statuses) == 1, statuses  # one answer, never a second one after a refusal
    return statuses[0], b"".join(read)


@pytest.fixture
def small_limits(monkeypatch):
    monkeypatch.setattr(demo_limits, "MAX_FIELD_BYTES", 100)
    monkeypatch.setattr(demo_limits, "MAX_FILE_BYTES", 1000)
    monkeypatch.setattr(demo_limits, "MAX_BODY_BYTES", 5000)
    monkeypatch.setattr(demo_limits, "MAX_OTHER_BYTES", 300)


def parts():
    """A form field or a file part, each within its limit or just over it, sometimes with an
    extra header that is itself over the field limit."""
    return st.builds(
        lambda is_file, n, big_header: part(b"files" if is_file else b"f", b"x" * n,
                                            b"a.png" if is_file else None,
                                            b"X-Pad: " + b"p" * 150 + b"\r\n" if big_header else b""),
        st.booleans(), st.sampled_from([0, 1, 99, 100, 101, 999, 1000, 1001]), st.booleans())


@given(body_parts=st.lists(parts(), min_size=1, max_size=4), chunks=st.lists(st.integers(0, 10**6), max_size=6),
       declare=st.booleans())
def test_multipart_bodies_are_passed_whole_or_refused_whatever_the_chunks(small_limits, body_parts, chunks, declare):
    body = body_of(*body_parts)
    over = (len(body) > demo_limits.MAX_BODY_BYTES or any(b"X-Pad" in p for p in body_parts)
            or any(p.count(b"x" * (1001 if b"filename" in p else 101)) for p in body_parts))
    status, read = serve(body, chunks, declare=declare)
    assert (status, read if status == 200 else None) == ((413, None) if over else (200, body))


@given(n=st.integers(0, 600), chunks=st.lists(st.integers(0, 10**6), max_size=4), declare=st.booleans())
def test_other_bodies_are_limited_whether_or_not_their_length_is_declared(small_limits, n, chunks, declare):
    status, read = serve(b"{" + b"x" * n + b"}", chunks, ctype=b"application/json", declare=declare)
    assert status == (413 if n + 2 > demo_limits.MAX_OTHER_BYTES else 200)


@pytest.mark.parametrize("boundary", [b"b" * 300, b""])
def test_a_boundary_python_multipart_refuses_is_a_400(boundary):
    status, read = serve(b"--" + boundary + b"\r\n", [], ctype=b"multipart/form-data; boundary=" + boundary)
    assert status in (400, 200) and read in (b"", b"--" + boundary + b"\r\n")
    if len(boundary) > 70:
        assert status == 400


def test_a_body_python_multipart_cannot_follow_is_left_to_gradio(small_limits):
    body = b"not multipart at all\r\n" * 3
    assert serve(body, [5, 17]) == (200, body)


def test_a_port_that_cannot_be_served_is_one_line_before_the_model_loads(tmp_path):
    import socket

    from util import UserError
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        number = taken.getsockname()[1]
        # gradio raised "Cannot find empty port" from inside its launch, after the model had loaded
        with pytest.raises(UserError, match=f"--port {number}: .*cannot be served .*choose another --port"):
            demo.main(["--port", str(number), "--model_path", str(tmp_path / "never-read.pth")])
    for bad in ("0", "-1", "70000"):  # 0 failed with "Connection refused", 70000 with an OverflowError
        with pytest.raises(UserError, match="a TCP port is a number in 1..65535"):
            demo.get_args_parser().parse_args(["--port", bad])
