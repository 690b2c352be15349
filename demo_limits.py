"""The demo's limits on every request body, checked as it arrives, before gradio parses it: an
ASGI middleware (``RequestLimits``) that follows multipart bodies part by part with
python-multipart, the parser gradio itself uses. Needs the demo's extra packages
(requirements-demo.txt)."""
import types

from python_multipart.multipart import MultipartParser, parse_options_header

MAX_FILE_BYTES = 50 * 1000 * 1000   # one file part (demo.MAX_UPLOAD)
MAX_FIELD_BYTES = 64 * 1024         # one form field that is not a file (gradio keeps those in memory)
MAX_BODY_BYTES = 1000 * 1000 * 1000  # one multipart request: 20 files of the largest size at a time
MAX_OTHER_BYTES = 1024 * 1024       # any other body (the page's JSON calls)


class BodyTooLarge(Exception):
    pass


class RequestLimits:
    """ASGI middleware in front of gradio: a request body over the limits above is answered 413
    while it arrives, so nothing large is ever parsed or held (gradio limits only file parts,
    and keeps a form field without a file name in memory, whatever its size). Multipart bodies
    are followed part by part (python-multipart, the parser gradio itself uses)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        ctype, params = parse_options_header(headers.get(b"content-type", b""))
        multipart = ctype == b"multipart/form-data" and b"boundary" in params
        limit = MAX_BODY_BYTES if multipart else MAX_OTHER_BYTES
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            return await self.refuse(send, f"request body of {int(declared)} bytes is over the limit of {limit}")
        try:
            parts = PartLimits(params[b"boundary"]) if multipart else None
        except Exception as e:  # python-multipart refuses the boundary (RFC 2046: 1 to 70 characters)
            return await self.refuse(send, f"multipart boundary not valid ({e})", status=400)
        seen, started, refused = 0, False, False

        async def limited_receive():
            # Over a limit: answer 413 now and tell the app the client left, so that it stops
            # reading; whatever it answers after that is dropped (a body error is its 400).
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                seen += len(body)
                try:
                    if seen > limit:
                        raise BodyTooLarge(f"request body over the limit of {limit} bytes")
                    if parts is not None:
                        parts.write(body)
                except BodyTooLarge as e:
                    refused = True
                    if not started:
                        await self.refuse(send, str(e))
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message):
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, tracked_send)

    @staticmethod
    async def refuse(send, why, status=413):
        body = f"{status}: {why}".encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class PartLimits:
    """Follows a multipart body as it arrives and raises ``BodyTooLarge`` for a file part over
    ``MAX_FILE_BYTES``, another part over ``MAX_FIELD_BYTES``, or a part's headers over
    ``MAX_FIELD_BYTES``."""

    def __init__(self, boundary):
        self.header, self.size, self.is_file = b"", 0, False
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self.begin, "on_header_value": self.header_value, "on_header_end": self.header_end,
            "on_part_data": self.data})
        self.field = b""

    def begin(self):
        self.size, self.is_file, self.field = 0, False, b""

    def header_value(self, data, start, end):
        self.field += data[start:end]
        if len(self.field) > MAX_FIELD_BYTES:  # gradio's parser, too, keeps a part's headers in memory
            raise BodyTooLarge(f"a part's headers over the limit of {MAX_FIELD_BYTES} bytes")

    def header_end(self):
        self.is_file = self.is_file or b"filename=" in self.field.lower()
        self.field = b""

    def data(self, data, start, end):
        self.size += end - start
        limit = MAX_FILE_BYTES if self.is_file else MAX_FIELD_BYTES
        if self.size > limit:
            raise BodyTooLarge(f"a {'file' if self.is_file else 'form field'} over the limit of {limit} bytes")

    def write(self, body):
        try:
            self.parser.write(body)
        except BodyTooLarge:
            raise
        except Exception:  # a body python-multipart cannot follow: gradio's own parser will refuse it
            self.parser = types.SimpleNamespace(write=lambda body: None)
