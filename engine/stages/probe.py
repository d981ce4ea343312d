"""Probe + technical filter: oversized files, unreadable containers, missing tracks, abnormal durations, low
resolution."""

from __future__ import annotations

from engine.core.config import MediaConfig
from engine.core.media import MediaError, NativeCalls, ProbeResult, check_size, open_source
from engine.stages.base import Row, RowStage


class ProbeStage(RowStage):
    """Reads container metadata (and the first frame, for its display rotation) and rejects clips the paper's
    technical filter removes. Width and height are as displayed, so portrait phone video is judged upright.

    The size limit is checked before the clip is fetched; PyAV then reads the container in the media child
    process (see engine.core.isolation), where a crash or a hang rejects this clip only. The fetched media is
    left on the row under `_media` so the decode stage, chained in the same task, does not fetch it again.
    """

    name = "probe"
    requires = ("source_uri",)
    produces = ("duration_s", "width", "height", "fps", "has_video", "has_audio", "video_codec", "audio_codec",
                "rotation", "video_track_s", "audio_track_s", "audio_track", "audio_channels")

    def __init__(self, config: MediaConfig) -> None:
        self.config = config
        self.native = NativeCalls("probe", config.isolation, config.decode_timeout_s, config.decode_attempts)

    def process_row(self, row: Row) -> None:
        try:
            check_size(row["source_uri"], self.config.max_bytes)
            source = open_source(row["source_uri"])
        except FileNotFoundError as err:
            raise MediaError("source_missing", str(err)) from None
        result = self.native.run(row["source_uri"], "engine.core.media.probe", source)
        row.update(result.__dict__)
        row["_media"] = source
        self._check(result)

    def _check(self, result: ProbeResult) -> None:
        cfg = self.config
        if not result.has_video:
            raise MediaError("missing_video_track")
        if not result.has_audio:
            raise MediaError("missing_audio_track")
        if result.duration_s is None:
            raise MediaError("unreadable_container", "no duration in container or streams")
        if result.duration_s < cfg.min_duration_s:
            raise MediaError("duration_too_short", f"{result.duration_s:.2f}s < {cfg.min_duration_s}s")
        if result.duration_s > cfg.max_duration_s:
            raise MediaError("duration_too_long", f"{result.duration_s:.2f}s > {cfg.max_duration_s}s")
        short_side = min(result.width or 0, result.height or 0)
        if short_side < cfg.min_short_side:
            raise MediaError("resolution_too_low", f"{result.width}x{result.height}, short side < {cfg.min_short_side}")
