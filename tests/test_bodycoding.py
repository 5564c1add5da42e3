"""common/bodycoding.py: gzip/deflate request bodies decoded in any chunking, bounded, and only when complete."""

from __future__ import annotations

import gzip
import zlib

import pytest

from binormal.common.bodycoding import BodyCodingError, BodyDecoder, BodyTooLarge

pytestmark = pytest.mark.timeout(30)

DATA = b"".join(b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * (i % 50)) for i in range(2000))


def _decode(coding: str, body: bytes, step: int, room: int = 1 << 30) -> bytes:
    dec = BodyDecoder(coding)
    out = b"".join(dec.feed(body[i : i + step], room) for i in range(0, len(body), step))
    dec.finish()
    return out


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 20])
@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("gzip", gzip.compress),
        ("gzip", lambda d: gzip.compress(d[:1000]) + gzip.compress(d[1000:])),  # two members
        ("deflate", zlib.compress),  # RFC 1950 (zlib-wrapped)
        ("deflate", _raw_deflate),  # raw RFC 1951, which some clients send
    ],
    ids=["gzip", "gzip-members", "zlib", "raw-deflate"],
)
def test_whole_streams_decode_in_any_chunking(coding: str, encode: object, step: int) -> None:
    assert callable(encode)
    assert _decode(coding, encode(DATA), step) == DATA


@pytest.mark.parametrize("cut", [1, 10, 100, -8, -1])
@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_cut_stream_is_truncated_however_much_decoded(coding: str, cut: int) -> None:
    body = gzip.compress(DATA) if coding == "gzip" else zlib.compress(DATA)
    with pytest.raises(BodyCodingError, match=f"not valid {coding}.*truncated"):
        _decode(coding, body[:cut], 64)


def test_a_cut_after_a_full_member_is_truncated() -> None:
    body = gzip.compress(DATA) + gzip.compress(DATA)[:50]
    with pytest.raises(BodyCodingError, match="truncated"):
        _decode("gzip", body, 1000)


@pytest.mark.parametrize(
    ("coding", "body", "says"),
    [
        ("gzip", b"\x1f\x8b" + b"\x00" * 30, "unknown compression method"),
        ("gzip", gzip.compress(DATA) + b"junk", "incorrect header check"),
        ("deflate", zlib.compress(DATA) + b"junk", "data after the end"),
        ("gzip", gzip.compress(DATA)[:-8] + b"\x00\x00\x00\x00" + gzip.compress(DATA)[-4:], "incorrect data check"),
    ],
    ids=["bad-header", "gzip-junk", "deflate-junk", "bad-crc"],
)
def test_corrupt_streams_name_zlib_reason_without_quoting(coding: str, body: bytes, says: str) -> None:
    with pytest.raises(BodyCodingError, match=says) as info:
        _decode(coding, body, 512)
    assert "junk" not in str(info.value) and "Error -3" not in str(info.value)


def test_output_stops_one_byte_past_the_room() -> None:
    dec = BodyDecoder("gzip")
    with pytest.raises(BodyTooLarge):
        dec.feed(gzip.compress(bytes(10 << 20)), 1 << 20)  # 10 MiB of zeros into 1 MiB of room


def test_an_empty_body_is_empty() -> None:
    dec = BodyDecoder("gzip")
    assert dec.feed(b"", 10) == b""
    dec.finish()
