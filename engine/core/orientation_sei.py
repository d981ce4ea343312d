"""The display-orientation SEI of H.264 and HEVC (payload type 47): a turn carried in the video bitstream itself, in
any container, which FFmpeg's decoder sets on the frames as a display matrix. engine.core.media_probe looks for one
in an mp4/mov whose track header leaves the picture unturned, before trusting that header without a decode.
"""

from __future__ import annotations

from collections.abc import Iterator

DISPLAY_ORIENTATION = 47  # the SEI payload type, the same in H.264 and HEVC


def may_turn(codec: str, extradata: bytes, sample: bytes) -> bool:
    """Whether the decoder may turn the frames: a display-orientation SEI in the first sample (its NAL units each
    after a big-endian length, as mp4 stores them) or, for HEVC, in the hvcC's NAL arrays. True as well where the
    configuration record does not read, so the caller decodes rather than guesses."""
    length_at = {"h264": 4, "hevc": 21}[codec]  # avcC / hvcC: lengthSizeMinusOne in the low two bits
    if len(extradata) <= length_at or extradata[0] != 1:
        return True
    units = _length_prefixed(sample, (extradata[length_at] & 3) + 1)
    if codec == "hevc":
        units = (*units, *_hvcc_units(extradata))
    return any(DISPLAY_ORIENTATION in _sei_types(unit, codec) for unit in units)


def _length_prefixed(sample: bytes, length_size: int) -> tuple[bytes, ...]:
    units, at = [], 0
    while at + length_size <= len(sample):
        size = int.from_bytes(sample[at : at + length_size], "big")
        units.append(sample[at + length_size : at + length_size + size])
        at += length_size + size
    return tuple(units)


def _hvcc_units(record: bytes) -> Iterator[bytes]:
    """The NAL units of an hvcC record's arrays (after its 22-byte header and the array count)."""
    at, arrays = 23, record[22] if len(record) > 22 else 0
    for _ in range(arrays):
        count, at = int.from_bytes(record[at + 1 : at + 3], "big"), at + 3
        for _ in range(count):
            size, at = int.from_bytes(record[at : at + 2], "big"), at + 2
            yield record[at : at + size]
            at += size


def _sei_types(unit: bytes, codec: str) -> list[int]:
    """The payload types of an SEI NAL unit's messages ([] for any other unit). Sizes count the unescaped payload,
    so the emulation-prevention bytes (00 00 03) come out first; a message cut short ends the list."""
    if codec == "h264" and unit[:1] and unit[0] & 0x1F == 6:
        rbsp = unit[1:]
    elif codec == "hevc" and len(unit) > 1 and (unit[0] >> 1) & 0x3F in (39, 40):  # prefix and suffix SEI
        rbsp = unit[2:]
    else:
        return []
    rbsp, types, at = rbsp.replace(b"\x00\x00\x03", b"\x00\x00"), [], 0
    while at < len(rbsp) and rbsp[at:] != b"\x80":  # 0x80 alone: the trailing bits
        kind, at = _sei_number(rbsp, at)
        size, at = _sei_number(rbsp, at)
        if at > len(rbsp):
            break
        types.append(kind)
        at += size
    return types


def _sei_number(rbsp: bytes, at: int) -> tuple[int, int]:
    """A payload type or size: 0xFF bytes adding 255 each, then the last byte. Past the end: a position past it."""
    value = 0
    while at < len(rbsp) and rbsp[at] == 0xFF:
        value, at = value + 255, at + 1
    return (value + rbsp[at], at + 1) if at < len(rbsp) else (value, at + 1)
