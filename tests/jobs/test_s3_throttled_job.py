"""A build against a throttled bucket: a loopback proxy in front of the moto S3 server answers every 6th request
(reads, listings and writes alike) with 503 SlowDown, during a first run (the first 8 clips) and during the
resume that does the rest. Nothing may be lost, deleted, set aside or written twice."""

import json

import pytest

from engine.core import storage
from engine.dataset.writer import read_clip_table
from tests.jobs.helpers import job_env, run_build
from tests.jobs.s3_throttle import ThrottlingProxy

pytestmark = pytest.mark.slow
BUCKET, OUT = "saber-test", "saber-test/out"


def _parts(fs) -> set[str]:
    fs.invalidate_cache()
    return {path for folder in ("clips", "attempts/clips", "relations") for path in
            (fs.ls(f"{OUT}/{folder}", detail=False) if fs.exists(f"{OUT}/{folder}") else [])}


def test_a_throttled_bucket_loses_deletes_and_duplicates_nothing(small_set, moto_s3):
    folder, clips = small_set
    fs = storage.filesystem(f"s3://{BUCKET}")  # straight to moto: setting up and checking are not throttled
    for path in folder.iterdir():
        if path.suffix in {".mp4", ".json"}:
            fs.put_file(str(path), f"{BUCKET}/raw/{path.name}")
    args = ("--input", f"s3://{BUCKET}/raw", "--output", f"s3://{OUT}")
    with ThrottlingProxy(moto_s3["AWS_ENDPOINT_URL"], every=6) as proxy:
        env = job_env(**{**moto_s3, "AWS_ENDPOINT_URL": proxy.url})
        first = run_build(*args, "limit=8", env=env)
        assert first.returncode == 0, first.stderr[-3000:]
        after_first = _parts(fs)
        second = run_build(*args, env=env)
        assert second.returncode == 0, second.stderr[-3000:]
    throttled, passed = dict(proxy.throttled), dict(proxy.passed)

    # Throttling really hit reads and writes, in both runs.
    assert throttled.get("GET", 0) >= 5 and throttled.get("PUT", 0) >= 1, throttled
    # Nothing deleted or set aside: every part of the first run is still there after the resume.
    assert after_first and after_first <= _parts(fs)
    assert not fs.exists(f"{OUT}/quarantine")
    # Every input once, with its planted verdict.
    table = read_clip_table(f"s3://{OUT}")
    ids = table.column("clip_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(clips)
    rows = {r["source_uri"].rsplit("/", 1)[-1]: r for r in table.to_pylist()}
    assert rows[clips[0].name]["source_uri"] == f"s3://{BUCKET}/raw/{clips[0].name}"
    for clip in clips:
        assert (rows[clip.name]["reject_stage"], rows[clip.name]["reject_reason"]) == (
            clip.expected_stage, clip.expected_reason), clip.name
    report = json.loads(fs.cat_file(f"{OUT}/report.json"))
    assert (report["input"], report["retry"]["pending"], report["run"]["skipped_already_done"]) == (len(clips), 0, 8)
    assert fs.exists(f"{OUT}/report.png") and fs.exists(f"{OUT}/config.yaml")
    # Secrets never reach the outputs.
    for key in (f"{OUT}/config.yaml", f"{OUT}/report.json"):
        assert b"testing" not in fs.cat_file(key)
    print(f"throttled bucket: {sum(throttled.values())} of {sum(throttled.values()) + sum(passed.values())} "
          f"requests answered 503 SlowDown ({throttled}); {len(clips)} clips, each once; "
          f"{len(after_first)} parts after the first run, none deleted")
