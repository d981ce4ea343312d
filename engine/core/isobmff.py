"""ISO base media files (mp4, mov, m4a, 3gp): walking their boxes (atoms) by the box headers alone, and each track's
display matrix - the turn a player gives the picture - as FFmpeg's mov demuxer reads it, without decoding a frame.
engine.core.media_probe reads the rotation from it; engine.devkit.demo_containers writes one into its demo clips.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

Box = tuple[bytes, int, int]  # type, where its body starts, where it ends (offsets in the file)
# A display matrix as stored, row by row: a b u / c d v / x y w; columns 16.16, 16.16 and 2.30 fixed point.
Matrix = tuple[int, ...]
IDENTITY: Matrix = (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
_SHIFTS = (16, 16, 30)  # the fixed point of each column
# Offsets from a box's body start (version and flags included), by box version; FFmpeg reads any version but 1 as 0.
_TKHD_TRACK_ID = {0: 12, 1: 20}  # created, modified: 4 bytes each in version 0, 8 in version 1
_TKHD_MATRIX = {0: 40, 1: 52}  # then track id, reserved, duration (8 in v1), reserved 8, layer/group/volume/reserved
_MVHD_MATRIX = {0: 36, 1: 48}  # created, modified, timescale, duration (8, 8, 4, 8 in v1), rate, volume, reserved 10


class BoxError(ValueError):
    """Boxes that do not hold together: a header cut short, a size smaller than its header or past its parent."""


@dataclass(frozen=True)
class Track:
    handler: bytes  # the media handler type: b"vide", b"soun", ...; b"" when the track names none
    track_id: int  # FFmpeg's stream.id for this track
    tkhd: int  # where its tkhd box body starts
    version: int  # of its tkhd box, as FFmpeg lays it out: 0 (32-bit times) or 1 (64-bit)
    matrix: Matrix  # its display matrix as FFmpeg applies it: the track's (tkhd) times the movie's (mvhd)

    @property
    def matrix_at(self) -> int:
        """Where the tkhd box's own matrix starts in the file."""
        return self.tkhd + _TKHD_MATRIX[self.version]


def boxes(handle: BinaryIO, start: int, end: int) -> Iterator[Box]:
    """Each box from `start` to `end`, reading only its header and seeking over its body (an mdat of gigabytes
    costs one seek). Size 1 means a 64-bit size follows the type; size 0, a box that runs to `end`."""
    while start + 8 <= end:
        head = read_at(handle, start, 16 if start + 16 <= end else 8)
        size, kind = struct.unpack_from(">I4s", head)
        body = start + 8
        if size == 1:
            if len(head) < 16:
                raise BoxError(f"{kind!r} box at {start}: its 64-bit size is cut off")
            size, body = struct.unpack_from(">Q", head, 8)[0], start + 16
        elif size == 0:
            size = end - start
        if size < body - start or start + size > end:
            raise BoxError(f"{kind!r} box at {start}: size {size} does not fit in {start}..{end}")
        yield kind, body, start + size
        start += size


def find_box(handle: BinaryIO, start: int, end: int, kind: bytes) -> Box:
    box = next((box for box in boxes(handle, start, end) if box[0] == kind), None)
    if box is None:
        raise BoxError(f"no {kind!r} box in {start}..{end}")
    return box


def read_at(handle: BinaryIO, at: int, size: int) -> bytes:
    handle.seek(at)
    data = handle.read(size)
    if len(data) < size:
        raise BoxError(f"{size} bytes at {at}: the file ends after {len(data)}")
    return data


def tracks(handle: BinaryIO, file_size: int) -> Iterator[Track]:
    """The tracks of the top-level moov box, in order, wherever it lies (before the media data or after it). The
    movie's matrix (mvhd) applies to the tracks after it, as in FFmpeg."""
    movie = (0,) * 9  # FFmpeg's before any mvhd (its context starts zeroed): a track there gets no angle
    _, body, end = find_box(handle, 0, file_size, b"moov")
    for kind, start, stop in boxes(handle, body, end):
        if kind == b"mvhd":
            movie = _matrix_at(handle, start, stop, _MVHD_MATRIX)
        elif kind == b"trak":
            yield _track(handle, start, stop, movie)


def video_track(handle: BinaryIO, file_size: int, track_id: int) -> Track:
    """The video ('vide') track with this id, or the first one where the id is 0 (not known)."""
    videos = (t for t in tracks(handle, file_size) if t.handler == b"vide")
    track = next((t for t in videos if not track_id or t.track_id == track_id), None)
    if track is None:
        raise BoxError(f"no video track with id {track_id}")
    return track


def _track(handle: BinaryIO, body: int, end: int, movie: Matrix) -> Track:
    parts = {kind: (start, stop) for kind, start, stop in boxes(handle, body, end)}
    if b"tkhd" not in parts:
        raise BoxError(f"trak box at {body - 8} has no tkhd")
    tkhd, tkhd_end = parts[b"tkhd"]
    version = 1 if read_at(handle, tkhd, 1)[0] == 1 else 0
    if tkhd + _TKHD_TRACK_ID[version] + 4 > tkhd_end:
        raise BoxError(f"tkhd box at {tkhd - 8} is too short")
    (track_id,) = struct.unpack(">I", read_at(handle, tkhd + _TKHD_TRACK_ID[version], 4))
    matrix = _combine(_matrix_at(handle, tkhd, tkhd_end, _TKHD_MATRIX), movie)
    return Track(_handler(handle, parts.get(b"mdia")), track_id, tkhd, version, matrix)


def _handler(handle: BinaryIO, mdia: tuple[int, int] | None) -> bytes:
    hdlr = next((box for box in boxes(handle, *mdia) if box[0] == b"hdlr"), None) if mdia else None
    if hdlr is None or hdlr[1] + 12 > hdlr[2]:  # version and flags, pre-defined, then the handler type
        return b""
    return read_at(handle, hdlr[1] + 8, 4)


def _matrix_at(handle: BinaryIO, body: int, end: int, offsets: dict[int, int]) -> Matrix:
    at = body + offsets[1 if read_at(handle, body, 1)[0] == 1 else 0]
    if at + 36 > end:
        raise BoxError(f"box at {body - 8} ends before its matrix")
    return struct.unpack(">9i", read_at(handle, at, 36))


def _combine(track: Matrix, movie: Matrix) -> Matrix:
    """track x movie in fixed point, as FFmpeg's mov_read_tkhd does it (each product shifted by the fixed point of
    its inner column, the sum kept to 32 bits)."""
    cells = (sum((track[3 * i + e] * movie[3 * e + j]) >> _SHIFTS[e] for e in range(3)) for i in range(3)
             for j in range(3))
    return tuple((cell + 2**31) % 2**32 - 2**31 for cell in cells)


def counter_clockwise(matrix: Matrix) -> int:
    """The matrix's angle as PyAV's frame.rotation gives it: FFmpeg's av_display_rotation_get (counter-clockwise
    degrees, -180..180) cut to an integer towards zero. BoxError for a matrix that flattens an axis, which has no
    angle (FFmpeg: NaN)."""
    a, b, c, d = (value / 65536 for value in (matrix[0], matrix[1], matrix[3], matrix[4]))
    x_scale, y_scale = math.hypot(a, c), math.hypot(b, d)
    if x_scale == 0 or y_scale == 0:
        raise BoxError(f"display matrix {matrix} has no angle")
    return math.trunc(-math.degrees(math.atan2(b / y_scale, a / x_scale)))
