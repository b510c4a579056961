"""Reading a webhook body with a hard size limit, before anything parses it.

aiohttp's ``client_max_size`` only guards ``request.read()``/``text()``/``post()``;
handlers that stream ``request.content`` (or receive a chunked body with no
Content-Length) must count bytes themselves. ``StreamReader.read(n)`` returns
*at most* ``n`` bytes — whatever has arrived — so one read is not "the body".
"""

from __future__ import annotations

from aiohttp import web


class BodyTooLarge(Exception):
    """The body is larger than the route accepts (answer 413)."""


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The whole request body, refusing early when it exceeds ``max_bytes``.

    Raises:
        BodyTooLarge: Content-Length says so, or more than ``max_bytes`` arrived.
    """
    if request.content_length is not None and request.content_length > max_bytes:
        raise BodyTooLarge(f"{request.content_length} bytes > {max_bytes}")
    body = bytearray()
    while chunk := await request.content.read(65536):
        body += chunk
        if len(body) > max_bytes:
            raise BodyTooLarge(f"more than {max_bytes} bytes")
    return bytes(body)


def too_large() -> web.Response:
    return web.Response(status=413, text="too large")
