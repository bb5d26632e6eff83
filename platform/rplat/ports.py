"""TCP ports for the servers rplat starts (vLLM, the dashboard) and torchrun's rendezvous: find one, check one."""

from __future__ import annotations

import socket

from rplat.errors import UserError


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS's pick); the caller binds it soon after."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port(host: str, port: int, fix: str) -> None:
    """Fail with one sentence unless `host:port` can be listened on; `fix` says what to change."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # Servers set SO_REUSEADDR too, so only a live listener (not a TIME_WAIT leftover) makes this fail.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); {fix}.") from None
