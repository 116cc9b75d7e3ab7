"""What can be wrong before `modelops local up` starts anything: a port taken, a hook's secret
missing. Each is an `InvalidSpec` naming the flag or the field; nothing is started or written."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from .. import errors
from .ports import free_port


def secret_reader(secrets_dir: Path | None):
    """Reads `SecretRef(name, key)` from `DIR/name/key` (`--secrets-dir` or MODELOPS_SECRETS_DIR)."""
    def read(ref) -> bytes:
        base = secrets_dir or (Path(os.environ["MODELOPS_SECRETS_DIR"])
                               if os.environ.get("MODELOPS_SECRETS_DIR") else None)
        if base is None:
            raise FileNotFoundError("no --secrets-dir")
        return (base / ref.name / ref.key).read_bytes().strip()
    return read


def check_secrets(hooks, read) -> None:
    """A secretRef that cannot be read fails before anything starts, naming the field."""
    for kind, items in (("webhooks", hooks.webhooks), ("gates", hooks.gates)):
        for i, item in enumerate(items):
            if item.secret_ref is None:
                continue
            try:
                read(item.secret_ref)
            except OSError:
                ref = item.secret_ref
                raise errors.InvalidSpec(
                    f"spec.hooks.{kind}[{i}].secretRef",
                    f"secret {ref.name}/{ref.key} not found: local mode reads secrets from files "
                    f"--secrets-dir DIR/{ref.name}/{ref.key}") from None


def check_ports(host: str, port: int, grpc_port: int | None) -> int:
    """The HTTP port to use (a free one for 0); refuses ports that are taken or the same."""
    if port == 0:
        port = free_port()
    elif port == grpc_port:
        raise errors.InvalidSpec("--grpc-port", f"{port} is the HTTP port too")
    for flag, p in (("--port", port), ("--grpc-port", grpc_port)):
        if not p:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, p))
            except OSError as exc:
                raise errors.InvalidSpec(flag, f"{host}:{p} is not free ({exc.strerror}); choose "
                                               f"another with {flag}") from None
    return port
