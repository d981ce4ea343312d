"""Fetch the cluster's secrets from AWS Secrets Manager onto a node, readable by its user only.

Run by the cluster launcher's setup commands inside the container, with the node's instance role (no keys
anywhere in the config or the image):
    python cluster/aws/fetch_secrets.py token --secret-id saber/ray-auth-token --out ~/.ray/auth_token
    python cluster/aws/fetch_secrets.py env --secret-id saber/api-keys --out ~/.saber/api_keys.env
`token`: the secret string is the Ray auth token, written as is. `env`: the secret string is a JSON object of
environment variables ({"GEMINI_API_KEY": ..., "OPENAI_API_KEY": ...}), written as shell-quoted KEY=VALUE lines
for `set -a; . FILE; set +a` before `ray start`, so the raylet and every worker inherit them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def env_file_text(secret: str) -> str:
    """KEY='value' lines from a JSON object; raises ValueError naming a bad key instead of writing it."""
    values = json.loads(secret)
    if not isinstance(values, dict):
        raise ValueError("the env secret must be a JSON object of NAME: value")
    bad = [name for name in values if not _ENV_NAME.match(str(name))]
    if bad:
        raise ValueError(f"not environment variable names: {bad}")
    return "".join(f"{name}={shlex.quote(str(value))}\n" for name, value in sorted(values.items()))


def write_private(path: Path, text: str) -> None:
    """Created with mode 0600 before any byte is written, so the secret is never readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    path.chmod(0o600)  # an existing file keeps its old mode through O_CREAT


def fetch(secret_id: str, region: str | None, client: Any = None) -> str:
    if client is None:
        import boto3

        client = boto3.client("secretsmanager", region_name=region)
    return client.get_secret_value(SecretId=secret_id)["SecretString"]


def main(argv: list[str] | None = None, client: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["token", "env"], help="token: Ray auth token; env: JSON of env variables")
    parser.add_argument("--secret-id", required=True, help="Secrets Manager name or ARN")
    parser.add_argument("--out", type=Path, required=True, help="file to write (mode 0600)")
    parser.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION"), help="AWS region of the secret")
    args = parser.parse_args(argv)
    secret = fetch(args.secret_id, args.region, client)
    text = secret.strip() + "\n" if args.kind == "token" else env_file_text(secret)
    write_private(args.out.expanduser(), text)
    print(f"wrote {args.kind} secret {args.secret_id} to {args.out}", file=sys.stderr)  # never the value
    return 0


if __name__ == "__main__":
    sys.exit(main())
