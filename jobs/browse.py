"""The data browser: a local page over a build's outputs (clips/, relations/, report.json), local or s3://.

    python jobs/browse.py outputs/demo                  # then open http://127.0.0.1:8765/
    python jobs/browse.py s3://bucket/saber/run1 --curation curation/run1.jsonl --port 9000

Filter the clips (status, stage, reason, corpus, language, emotion, relation), open one to see its frames, hear
its audio, read its annotation, transcript diff, description, scores and provenance, and mark it keep / drop /
note. Marks go to a JSON Lines file (default OUT/curation.jsonl; format and reader: engine/dataset/browse.py); the
build's data are never written. Bound to 127.0.0.1 unless --host says otherwise: the page has no login.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from werkzeug.serving import run_simple  # noqa: E402

from engine.dataset.browse import LOOPBACK, PreviewSettings, create_app  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="a build_saber output folder, local or s3://")
    parser.add_argument("--port", type=int, default=8765, help="port to serve on (default 8765)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; anything else exposes the page without a login)")
    parser.add_argument("--curation", help="JSON Lines file for keep/drop/note marks (default OUT/curation.jsonl)")
    parser.add_argument("--frames", type=int, default=6, help="frames decoded per opened clip (default 6)")
    parser.add_argument("--max-side", type=int, default=360, help="longest side of a shown frame in pixels")
    args = parser.parse_args(argv)
    loopback = args.host in LOOPBACK
    if not loopback:
        logging.warning("serving on %s: anyone who can reach it can read the clips and write curation marks",
                        args.host)
    try:
        app = create_app(args.output, args.curation, PreviewSettings(frames=args.frames, max_side=args.max_side),
                         loopback_only=loopback)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    print(f"browsing {args.output} at http://{args.host}:{args.port}/", flush=True)
    run_simple(args.host, args.port, app, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
