"""Decoding ``Content-Encoding: gzip`` / ``deflate`` request bodies ourselves, bounded and complete.

aiohttp's own decoding (``auto_decompress``) checks at the end of the body only that a *deflate*
stream reached its end marker: a gzip stream that stops between two blocks (a shipper killed
mid-request, a proxy that lost the tail) decodes to whatever came before the cut, and the handler
would take it as the whole body. So the services' runner turns it off
(``common.server.BoundedAppRunner``) and :func:`common.http.read_body` decodes with a
:class:`BodyDecoder`, which

- bounds the decoded size as it goes (``zlib`` ``max_length``: a gzip bomb is refused after
  ``limit`` bytes of output, never decoded into memory);
- decodes concatenated gzip members as one body (RFC 1952, ``cat a.gz b.gz``), as aiohttp does;
- refuses a stream that ends before its end marker (:meth:`BodyDecoder.finish`) and anything zlib
  refuses (bad header, bad block, bad CRC-32 or length in the gzip trailer, bytes after the end
  that are no gzip member).
"""

from __future__ import annotations

import zlib

CODINGS = ("gzip", "deflate", "identity")  # the Content-Encoding values a body may have (one coding)
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib: expect a gzip header and trailer (CRC-32, size)


class BodyCodingError(ValueError):
    """The body does not decode; the message names the problem and never quotes the body."""


class BodyTooLarge(ValueError):
    """The decoded body passed the limit."""


class BodyDecoder:
    """Incremental decoder of one request body in ``coding`` (``gzip`` or ``deflate``)."""

    def __init__(self, coding: str) -> None:
        if coding not in ("gzip", "deflate"):
            raise ValueError(f"not a compressed coding: {coding}")
        self.coding = coding
        self._d: zlib._Decompress | None = None  # created on the first byte (deflate: wrapped or raw)
        self.raw = 0  # compressed bytes fed

    def _new(self, first: int) -> zlib._Decompress:
        if self.coding == "gzip":
            return zlib.decompressobj(GZIP_WBITS)
        # RFC 1950 says deflate is zlib-wrapped (CM = 8 in the low nibble of the first byte); some
        # clients send raw RFC 1951 data instead, which aiohttp accepts too: a raw window then.
        return zlib.decompressobj(zlib.MAX_WBITS if first & 0x0F == 8 else -zlib.MAX_WBITS)

    def feed(self, data: bytes, room: int) -> bytes:
        """The bytes ``data`` decodes to; :class:`BodyTooLarge` once they pass ``room``."""
        self.raw += len(data)
        out: list[bytes] = []
        made = 0
        while data:
            if self._d is None:
                self._d = self._new(data[0])
            elif self._d.eof:
                # The member ended and more follows: another gzip member, else the body is bad.
                if self.coding != "gzip":
                    raise BodyCodingError(self._bad("data after the end of the compressed stream"))
                self._d = self._new(data[0])
            try:
                # max_length bounds what one call may produce; the rest of the input waits in
                # unconsumed_tail, so a bomb never expands past room + 1 bytes.
                chunk = self._d.decompress(data, room - made + 1)
            except zlib.error as exc:
                raise BodyCodingError(self._bad(_zlib_reason(exc))) from None
            made += len(chunk)
            if made > room:
                raise BodyTooLarge(self.coding)
            out.append(chunk)
            # Not at the end: the input held back by max_length. At the end: what follows the member.
            data = self._d.unused_data if self._d.eof else self._d.unconsumed_tail
        return b"".join(out)

    def finish(self) -> None:
        """:class:`BodyCodingError` unless the stream reached its end marker (an empty body is fine)."""
        if self._d is not None and not self._d.eof:
            raise BodyCodingError(
                self._bad(
                    "the compressed stream is truncated (it ends before its end marker), so the body is incomplete"
                )
            )

    def _bad(self, why: str) -> str:
        return f"body is not valid {self.coding} (Content-Encoding: {self.coding}): {why}; nothing was written"


def _zlib_reason(exc: zlib.error) -> str:
    """zlib's reason without its ``Error -3 while decompressing data:`` prefix (it never quotes the data)."""
    text = str(exc)
    return text.split(": ", 1)[1] if ": " in text else text
