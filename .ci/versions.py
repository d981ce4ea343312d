"""Version helpers for the Makefile's install targets (standard library only: runs before anything is installed).

    python .ci/versions.py ranges torch torchvision   # pyproject.toml's requirement strings for these packages
    python .ci/versions.py drift requirements.lock    # installed versions that differ from the lock's pins
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def normalized(name: str) -> str:
    """PEP 503 form, so `PyYAML`, `pyyaml` and `py_yaml` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalized(re.split(r"[\s\[<>=!~;@]", requirement, maxsplit=1)[0])


def ranges(names: list[str]) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {normalized(name) for name in names}
    found = [req for req in project["dependencies"] if requirement_name(req) in wanted]
    missing = wanted - {requirement_name(req) for req in found}
    if missing:
        raise SystemExit(f"pyproject.toml names no {sorted(missing)}")
    return found


def pins(lock: Path) -> dict[str, str]:
    pinned = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if match:
            pinned[normalized(match[1])] = match[2]
    return pinned


def drift(lock: Path) -> list[str]:
    installed = {normalized(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}
    lines = []
    for name, version in sorted(pins(lock).items()):
        now = installed.get(name)
        if now != version:
            lines.append(f"{name}: lock {version}, installed {now or 'none'}")
    return lines


def main(argv: list[str]) -> None:
    if len(argv) >= 2 and argv[0] == "ranges":
        print(" ".join(ranges(argv[1:])))  # one word each: no spaces in a requirement string
    elif len(argv) == 2 and argv[0] == "drift":
        lines = drift(Path(argv[1]))
        print("\n".join(lines) if lines else "installed versions equal the lock")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
