"""The probe's rotation read from an mp4/mov's track header (engine.core.isobmff) against the answer it replaces, the
first decoded frame's: every turn, moov before and after the media data, in memory, 64-bit and to-the-end box sizes,
a version-1 tkhd, the movie's matrix, and headers that do not read (back to the decode, without raising)."""

from __future__ import annotations

import io
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import av
import pytest

from engine.core import isobmff, media_probe, orientation_sei
from engine.core.media_probe import MediaSource, probe
from engine.devkit.demo_containers import rotate_video_track, write_pattern_clip

H264 = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")
# ffmpeg writes moov after mdat unless asked for faststart.
LAYOUTS = {"mp4": ("mp4", H264), "faststart": ("mp4", (*H264, "-movflags", "+faststart")), "mov": ("mov", H264)}
SIZE = (64, 48)
ONE, MINUS_ONE = 0x10000, -0x10000
TURN_90 = (0, ONE, 0, MINUS_ONE, 0, 0, 0, 0, 0x40000000)  # 90 clockwise, as rotate_video_track writes it


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("rotation")
    for layout, (suffix, codec_args) in LAYOUTS.items():
        write_pattern_clip(out / f"{layout}.{suffix}", duration_s=0.2, size=SIZE, fps=10, codec_args=codec_args)
    return {layout: out / f"{layout}.{suffix}" for layout, (suffix, _) in LAYOUTS.items()}


@pytest.fixture
def rotated(clips: dict[str, Path], tmp_path: Path) -> Callable[[str, int], Path]:
    def make(layout: str, clockwise: int) -> Path:
        path = Path(shutil.copy(clips[layout], tmp_path / clips[layout].name))
        if clockwise:
            rotate_video_track(path, clockwise)
        return path

    return make


@pytest.fixture
def no_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe must take the rotation from the header: decoding a frame for it fails the test."""

    def refuse(*_: object) -> int:
        raise AssertionError("the probe decoded a frame for the rotation")

    monkeypatch.setattr(media_probe, "_frame_rotation", refuse)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rotations the probe took from a decoded frame (the fallback), in order."""
    answers: list[int] = []
    decode = media_probe._frame_rotation

    def recorded(*args: object) -> int:
        answers.append(decode(*args))
        return answers[-1]

    monkeypatch.setattr(media_probe, "_frame_rotation", recorded)
    return answers


def frame_answer(source: MediaSource) -> int:
    """What the probe answered before the header reader: the first frame's display matrix."""
    with av.open(media_probe.rewind(source)) as container:
        return media_probe._clockwise(next(container.decode(video=0)).rotation)


def top_level(data: bytes) -> dict[bytes, tuple[int, int, int]]:
    """type -> (box start, body start, end) of the file's top-level boxes."""
    handle = io.BytesIO(data)
    return {kind: (body - 8, body, end) for kind, body, end in isobmff.boxes(handle, 0, len(data))}


def test_clips_put_moov_before_and_after_the_media_data(clips: dict[str, Path]) -> None:
    order = {layout: list(top_level(path.read_bytes())) for layout, path in clips.items()}
    assert order["faststart"].index(b"moov") < order["faststart"].index(b"mdat")
    assert order["mp4"].index(b"moov") > order["mp4"].index(b"mdat")
    assert order["mov"].index(b"moov") > order["mov"].index(b"mdat")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("clockwise", [0, 90, 180, 270])
def test_header_rotation_is_the_first_frames(rotated: Callable, no_decode: None, layout: str, clockwise: int) -> None:
    path = rotated(layout, clockwise)
    assert frame_answer(str(path)) == clockwise
    result = probe(str(path))
    assert result.rotation == clockwise
    assert (result.width, result.height) == (SIZE[::-1] if clockwise in (90, 270) else SIZE)


@pytest.mark.parametrize("layout", ["mp4", "faststart"])
def test_in_memory_source(rotated: Callable, no_decode: None, layout: str) -> None:
    source = io.BytesIO(rotated(layout, 270).read_bytes())
    assert probe(source).rotation == 270
    assert frame_answer(source) == 270


def test_64_bit_and_to_the_end_box_sizes(rotated: Callable, no_decode: None, tmp_path: Path) -> None:
    # moov after mdat: the 8-byte free box before mdat and mdat's header become one 16-byte mdat header (size 1,
    # then 64 bits), so no sample moves; moov, the last box, gets size 0 (runs to the end of the file).
    data = bytearray(rotated("mp4", 90).read_bytes())
    boxes = top_level(bytes(data))
    free, (mdat, _, mdat_end), (moov, _, _) = boxes[b"free"], boxes[b"mdat"], boxes[b"moov"]
    assert free[2] == mdat and free[2] - free[0] == 8
    struct.pack_into(">I4sQ", data, free[0], 1, b"mdat", mdat_end - free[0])
    struct.pack_into(">I", data, moov, 0)
    # moov before mdat: mdat, the last box, runs to the end.
    fast = bytearray(rotated("faststart", 180).read_bytes())
    struct.pack_into(">I", fast, top_level(bytes(fast))[b"mdat"][0], 0)
    for clockwise, edited in ((90, data), (180, fast)):
        path = tmp_path / f"sizes_{clockwise}.mp4"
        path.write_bytes(edited)
        assert [kind for kind in top_level(bytes(edited))][-2:] in ([b"mdat", b"moov"], [b"free", b"mdat"])
        assert frame_answer(str(path)) == clockwise
        assert probe(str(path)).rotation == clockwise


def tkhd_as_version_1(data: bytes) -> bytes:
    """The file with its video tkhd rebuilt as a version-1 box (64-bit times and duration, 12 bytes longer), trak
    and moov grown to match. Only for moov after mdat, where growing moov moves no sample."""
    handle = io.BytesIO(data)
    _, moov, moov_end = isobmff.find_box(handle, 0, len(data), b"moov")
    _, trak, trak_end = isobmff.find_box(handle, moov, moov_end, b"trak")
    _, tkhd, tkhd_end = isobmff.find_box(handle, trak, trak_end, b"tkhd")
    assert data[tkhd] == 0 and moov > top_level(data)[b"mdat"][1]
    flags, created, modified, track_id, reserved, duration = struct.unpack_from(">4s5I", data, tkhd)
    wide = 0xFFFFFFFFFFFFFFFF if duration == 0xFFFFFFFF else duration  # all ones: unknown, in either width
    body = b"\x01" + flags[1:] + struct.pack(">QQIIQ", created, modified, track_id, reserved, wide)
    body += data[tkhd + 24 : tkhd_end]  # reserved, layer, group, volume, the matrix, width, height
    out = bytearray(data[: tkhd - 8] + struct.pack(">I4s", 8 + len(body), b"tkhd") + body + data[tkhd_end:])
    for box in (moov - 8, trak - 8):
        struct.pack_into(">I", out, box, struct.unpack_from(">I", out, box)[0] + 12)
    return bytes(out)


@pytest.mark.parametrize("clockwise", [90, 270])
def test_tkhd_version_1(rotated: Callable, no_decode: None, tmp_path: Path, clockwise: int) -> None:
    path = tmp_path / "v1.mp4"
    path.write_bytes(tkhd_as_version_1(rotated("mp4", clockwise).read_bytes()))
    with path.open("rb") as handle:
        assert isobmff.video_track(handle, path.stat().st_size, 0).version == 1
    assert frame_answer(str(path)) == clockwise
    assert probe(str(path)).rotation == clockwise


def test_movie_matrix_applies_after_the_tracks(rotated: Callable, no_decode: None, tmp_path: Path) -> None:
    """FFmpeg multiplies the tkhd matrix by the mvhd one: 90 clockwise in each is a half turn."""
    data = bytearray(rotated("mp4", 90).read_bytes())
    handle = io.BytesIO(bytes(data))
    _, moov, moov_end = isobmff.find_box(handle, 0, len(data), b"moov")
    _, mvhd, _ = isobmff.find_box(handle, moov, moov_end, b"mvhd")
    assert data[mvhd] == 0
    struct.pack_into(">9i", data, mvhd + 36, *TURN_90)
    path = tmp_path / "movie_turned.mp4"
    path.write_bytes(data)
    assert frame_answer(str(path)) == 180
    assert probe(str(path)).rotation == 180


def moov_cut_short(data: bytes) -> bytes:
    return data[:-50]  # the udta box after the tracks: FFmpeg still opens the file, the boxes no longer add up


def tkhd_too_short(data: bytes) -> bytes:
    """tkhd's size cut to end before its matrix, a free box over the rest: FFmpeg reads past the box's end (it
    warns and takes the matrix anyway), the header reader calls the box malformed."""
    handle = io.BytesIO(data)
    track = isobmff.video_track(handle, len(data), 0)
    out = bytearray(data)
    struct.pack_into(">I", out, track.tkhd - 8, 48)
    struct.pack_into(">I4s", out, track.tkhd + 40, 92 - 48, b"free")
    return bytes(out)


def matrix_without_angle(data: bytes) -> bytes:
    track = isobmff.video_track(io.BytesIO(data), len(data), 0)
    out = bytearray(data)
    struct.pack_into(">9i", out, track.matrix_at, 0, 0, 0, 0, 0, 0, 0, 0, 0x40000000)
    return bytes(out)


@pytest.mark.parametrize("damage", [moov_cut_short, tkhd_too_short])
def test_unreadable_header_falls_back_to_the_frame(rotated: Callable, decodes: list[int], tmp_path: Path,
                                                   damage: Callable[[bytes], bytes]) -> None:
    path = tmp_path / "damaged.mp4"
    path.write_bytes(damage(rotated("mp4", 90).read_bytes()))
    with path.open("rb") as handle, pytest.raises(isobmff.BoxError):
        isobmff.video_track(handle, path.stat().st_size, 0)
    assert frame_answer(str(path)) == 90
    assert probe(str(path)).rotation == 90
    assert decodes == [90]


def test_matrix_without_an_angle_falls_back(rotated: Callable, decodes: list[int], tmp_path: Path) -> None:
    path = tmp_path / "flat.mp4"
    path.write_bytes(matrix_without_angle(rotated("mp4", 0).read_bytes()))
    probe(str(path))
    assert len(decodes) == 1  # whatever FFmpeg makes of it, the probe answers as the frame does


SEI_TURN = (*H264, "-bsf:v", "h264_metadata=display_orientation=insert:rotate=90")  # 90 counter-clockwise


def test_other_containers_decode_the_frame(tmp_path: Path, decodes: list[int]) -> None:
    """An H.264 display-orientation SEI turns the frames in any container (here mpegts): no container settles it."""
    path = tmp_path / "sei.ts"
    write_pattern_clip(path, duration_s=0.2, size=SIZE, fps=10, codec_args=SEI_TURN)
    assert probe(str(path)).rotation == frame_answer(str(path)) == 270
    assert decodes == [270]


@pytest.mark.parametrize(("header", "expected"), [(0, 270), (180, 180)])
def test_orientation_sei_in_an_mp4(tmp_path: Path, decodes: list[int], header: int, expected: int) -> None:
    """The SEI's turn shows where the header has none (decoded, the demuxed first packet first); a header turn
    comes before it on the frame, so then the header answers alone."""
    path = tmp_path / "sei.mp4"
    write_pattern_clip(path, duration_s=0.2, size=SIZE, fps=10, codec_args=SEI_TURN)
    if header:
        rotate_video_track(path, header)
    assert probe(str(path)).rotation == frame_answer(str(path)) == expected
    assert decodes == ([] if header else [expected])


# The parser on bytes built here: boxes, tracks picked by id, a version-1 tkhd.


def box(kind: bytes, *children: bytes) -> bytes:
    body = b"".join(children)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def tkhd(track_id: int, matrix: tuple[int, ...], version: int = 0) -> bytes:
    times = struct.pack(">QQIIQ", 1, 2, track_id, 0, 3) if version else struct.pack(">5I", 1, 2, track_id, 0, 3)
    return box(b"tkhd", bytes([version, 0, 0, 3]), times, bytes(16), struct.pack(">9i", *matrix),
               struct.pack(">II", 64 << 16, 48 << 16))


def trak(track_id: int, handler: bytes, matrix: tuple[int, ...] = isobmff.IDENTITY, version: int = 0) -> bytes:
    hdlr = box(b"hdlr", bytes(8), handler, bytes(12), b"name\x00")
    return box(b"trak", tkhd(track_id, matrix, version), box(b"mdia", box(b"mdhd", bytes(24)), hdlr))


def mvhd(matrix: tuple[int, ...]) -> bytes:
    # version and flags, created, modified, timescale, duration, rate, volume, reserved 10, the matrix, 7 more fields
    return box(b"mvhd", bytes(4), struct.pack(">4IIH", 0, 0, 1000, 0, ONE, 0x100), bytes(10),
               struct.pack(">9i", *matrix), bytes(28))


def test_tracks_by_id_and_version() -> None:
    moov = box(b"moov", mvhd(isobmff.IDENTITY), trak(1, b"soun"), trak(2, b"vide"),
               trak(3, b"vide", TURN_90, version=1))
    data = box(b"ftyp", b"isom") + box(b"mdat", bytes(40)) + moov
    handle = io.BytesIO(data)
    assert [(t.track_id, t.handler, t.version) for t in isobmff.tracks(handle, len(data))] == [
        (1, b"soun", 0), (2, b"vide", 0), (3, b"vide", 1)]
    assert isobmff.video_track(handle, len(data), 0).track_id == 2  # id 0 (not known): the first video track
    turned = isobmff.video_track(handle, len(data), 3)
    assert turned.matrix == TURN_90
    assert isobmff.counter_clockwise(turned.matrix) == -90  # frame.rotation's sign: 90 clockwise
    assert data[turned.matrix_at : turned.matrix_at + 36] == struct.pack(">9i", *TURN_90)
    with pytest.raises(isobmff.BoxError):
        isobmff.video_track(handle, len(data), 1)  # the sound track's id


def test_movie_matrix_multiplies_and_must_come_first() -> None:
    """tkhd x mvhd, each 90 clockwise: a half turn. A track before any mvhd has none to multiply by (FFmpeg's starts
    zeroed), so no angle: BoxError, and the probe decodes."""
    turned_twice = box(b"moov", mvhd(TURN_90), trak(1, b"vide", TURN_90))
    assert isobmff.counter_clockwise(isobmff.video_track(io.BytesIO(turned_twice), len(turned_twice), 1).matrix) in (
        180, -180)
    movie_last = box(b"moov", trak(1, b"vide", TURN_90), mvhd(isobmff.IDENTITY))
    with pytest.raises(isobmff.BoxError):
        isobmff.counter_clockwise(isobmff.video_track(io.BytesIO(movie_last), len(movie_last), 1).matrix)


def test_box_sizes() -> None:
    """Size 1: a 64-bit size after the type; size 0: to the end. Sizes that do not fit raise BoxError."""
    long = struct.pack(">I4sQ", 1, b"mdat", 16 + 4) + bytes(4)
    data = box(b"ftyp", b"isom") + long + struct.pack(">I4s", 0, b"moov") + bytes(10)
    assert [(kind, end - body) for kind, body, end in isobmff.boxes(io.BytesIO(data), 0, len(data))] == [
        (b"ftyp", 4), (b"mdat", 4), (b"moov", 10)]
    broken = {
        "past the end": box(b"ftyp", b"isom") + struct.pack(">I4s", 40, b"free") + bytes(8),
        "smaller than its header": struct.pack(">I4s", 4, b"free") + bytes(8),
        "64-bit size smaller than its header": struct.pack(">I4sQ", 1, b"mdat", 8) + bytes(8),
        "64-bit size cut off": long[:12],
    }
    for name, bad in broken.items():
        with pytest.raises(isobmff.BoxError):
            list(isobmff.boxes(io.BytesIO(bad), 0, len(bad)))
            pytest.fail(name)


def test_matrix_without_an_angle() -> None:
    with pytest.raises(isobmff.BoxError):
        isobmff.counter_clockwise((0, 0, 0, 0, 0, 0, 0, 0, 0x40000000))


def test_orientation_sei_in_nal_units() -> None:
    avcc = bytes([1, 0x64, 0, 0x1F, 0xFF])  # lengthSizeMinusOne 3
    unregistered = bytes([0x06, 5, 3]) + bytes(3) + b"\x80"  # SEI: user data unregistered, 3 bytes
    # SEI: display orientation, 2 bytes (escaped: 00 00 03 00 is 00 00 00), after a 255+3 byte message type 258
    orientation = bytes([0x06, 0xFF, 3, 4, 0, 0, 3, 0, 0, 47, 2, 0x12, 0x34, 0x80])
    slice_ = bytes([0x65, 0x88, 0x84])
    sample = b"".join(len(unit).to_bytes(4, "big") + unit for unit in (unregistered, slice_))
    assert not orientation_sei.may_turn("h264", avcc, sample)
    sample += len(orientation).to_bytes(4, "big") + orientation
    assert orientation_sei.may_turn("h264", avcc, sample)
    assert orientation_sei.may_turn("h264", b"", b"")  # no avcC to read the lengths by: decode rather than guess
    # HEVC: a prefix SEI (type 39) carrying it in the hvcC's arrays, none in the sample
    hevc_sei = bytes([39 << 1, 1, 47, 1, 0, 0x80])
    hvcc = bytes([1]) + bytes(20) + bytes([3]) + bytes([1, 0x80 | 39, 0, 1]) + len(hevc_sei).to_bytes(2, "big")
    hvcc += hevc_sei
    hevc_slice = bytes([19 << 1, 1, 0xAF])
    assert orientation_sei.may_turn("hevc", hvcc, len(hevc_slice).to_bytes(4, "big") + hevc_slice)
    assert not orientation_sei.may_turn("hevc", hvcc[:22] + bytes([0]), len(hevc_slice).to_bytes(4, "big") + hevc_slice)
