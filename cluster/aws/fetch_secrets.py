"""Fetch the cluster's secrets from AWS Secrets Manager onto a node, readable by its user only.

Run by the cluster launcher's setup commands inside the container, with the node's instance role (no keys
anywhere in the config or the image):
    python cluster/aws/fetch_secrets.py token --secret-id saber/ray-auth-token --out ~/.ray/auth_token
    python cluster/aws/fetch_secrets.py keys --secret-id saber/api-keys --out ~/.saber/api-keys
`token`: the secret string is the Ray auth token, written as is. `keys`: the secret string is a JSON object of
key names and keys ({"GEMINI_API_KEY": ..., "OPENAI_API_KEY": ...}), written as one file per name holding only
the key, in a folder of mode 0700 (files 0600). The HTTP backend reads its key from there
($SABER_API_KEY_DIR/<api_key_env>, engine/models/backends/http.py) when its actor starts: the keys are never put in
`ray start`'s environment, which every worker and job on the node would inherit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

# Also what makes a name safe as a file name: no "/", no "..", no hidden files.
_KEY_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def key_files(secret: str) -> dict[str, str]:
    """{file name: content} from a JSON object; raises ValueError naming a bad name (never a value)."""
    values = json.loads(secret)
    if not isinstance(values, dict):
        raise ValueError("the keys secret must be a JSON object of NAME: key")
    bad = [name for name in values if not _KEY_NAME.match(str(name))]
    if bad:
        raise ValueError(f"not key names (capitals, digits and _): {bad}")
    empty = [name for name, value in values.items() if not str(value).strip()]
    if empty:
        raise ValueError(f"empty keys: {empty}")
    return {name: str(value).strip() + "\n" for name, value in sorted(values.items())}


def write_private(path: Path, text: str) -> None:
    """Created with mode 0600 before any byte is written, so the secret is never readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    path.chmod(0o600)  # an existing file keeps its old mode through O_CREAT


def write_key_folder(folder: Path, files: dict[str, str]) -> None:
    """The folder holds exactly the secret's keys: a key removed from the secret leaves the node too."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    for stale in folder.iterdir():
        if _KEY_NAME.match(stale.name) and stale.name not in files and stale.is_file():
            stale.unlink()
    for name, text in files.items():
        write_private(folder / name, text)


def fetch(secret_id: str, region: str | None, client: Any = None) -> str:
    if client is None:
        import boto3

        client = boto3.client("secretsmanager", region_name=region)
    return client.get_secret_value(SecretId=secret_id)["SecretString"]


def main(argv: list[str] | None = None, client: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["token", "keys"], help="token: Ray auth token; keys: JSON of API keys")
    parser.add_argument("--secret-id", required=True, help="Secrets Manager name or ARN")
    parser.add_argument("--out", type=Path, required=True,
                        help="token: the file to write (mode 0600); keys: the folder to fill (0700, files 0600)")
    parser.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION"), help="AWS region of the secret")
    args = parser.parse_args(argv)
    secret = fetch(args.secret_id, args.region, client)
    out = args.out.expanduser()
    if args.kind == "token":
        write_private(out, secret.strip() + "\n")
        names = "the token"
    else:
        files = key_files(secret)
        write_key_folder(out, files)
        names = ", ".join(files)
    print(f"wrote {names} from secret {args.secret_id} to {args.out}", file=sys.stderr)  # names, never values
    return 0


if __name__ == "__main__":
    sys.exit(main())
