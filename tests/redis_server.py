"""A real redis-server for tests: free loopback port, a password, no persistence."""

from __future__ import annotations

import secrets
import shutil
import socket
from pathlib import Path

from tests.procs import Proc, free_port, wait_until


def _answers_ping(port: int, password: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            reply = b""
            while b"PONG" not in reply and b"-" not in reply:
                chunk = sock.recv(64)
                if not chunk:
                    break
                reply += chunk
            return b"+PONG" in reply
    except OSError:
        return False


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (scripts/bootstrap installs it)"
        self._binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.password = secrets.token_urlsafe(24)
        self.address = f"127.0.0.1:{self.port}"
        self._proc: Proc | None = None
        self._starts = 0

    def start(self) -> RedisServer:
        self._starts += 1
        self._proc = Proc(
            [
                self._binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--requirepass",
                self.password,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            self.workdir / f"redis-{self._starts}.log",
            {},
        )
        wait_until(lambda: _answers_ping(self.port, self.password), 15, "redis-server")
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(timeout=5)

    def kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def command(self, *args: str) -> str:
        """Send one inline command (after AUTH) and return the raw reply text."""
        payload = f"AUTH {self.password}\r\n" + " ".join(args) + "\r\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(payload.encode())
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data.decode(errors="replace")

    def total_commands(self) -> int:
        """Commands processed since the server started, from INFO commandstats (our own
        AUTH and INFO are excluded)."""
        info = self.command("INFO", "commandstats")
        total = 0
        for line in info.splitlines():
            if line.startswith("cmdstat_"):
                name, _, stats = line.partition(":")
                if name in ("cmdstat_auth", "cmdstat_info"):
                    continue
                fields = dict(item.split("=") for item in stats.split(","))
                total += int(fields["calls"])
        return total
