"""A real redis-server for tests: free loopback port, a password, no persistence unless
asked for; and a stand-in listener that counts the connections made to a dead Redis."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import threading
from pathlib import Path
from typing import Literal

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
    """``password`` is what clients are given; ``set_password`` changes what the server
    accepts (a rotation) until ``restore_password`` or a restart."""

    def __init__(self, workdir: Path, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (scripts/bootstrap installs it)"
        self._binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.password = secrets.token_urlsafe(24)
        self.address = f"127.0.0.1:{self.port}"
        # An append-only file synced on every write: a SIGKILLed server restarts with
        # every key it acknowledged, TTLs included.
        self._persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if persistent
            else ["--appendonly", "no"]
        )
        self._current_password = self.password
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
                *self._persistence,
                "--dir",
                str(self.workdir),
            ],
            self.workdir / f"redis-{self._starts}.log",
            {},
        )
        self._current_password = self.password
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
        payload = f"AUTH {self._current_password}\r\n" + " ".join(args) + "\r\n"
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

    def integer(self, *args: str) -> int:
        """The integer reply of one command (EXISTS, TTL, DBSIZE, ...)."""
        reply = self.command(*args).splitlines()[-1]
        assert reply.startswith(":"), reply
        return int(reply[1:])

    def info_field(self, section: str, name: str) -> int:
        """One integer field of INFO (e.g. ``stats``, ``total_connections_received``)."""
        for line in self.command("INFO", section).splitlines():
            if line.startswith(f"{name}:"):
                return int(line.partition(":")[2])
        raise AssertionError(f"INFO {section} has no {name}")

    def set_password(self, new: str, via: Literal["config", "acl"] = "config") -> None:
        """Change the password the server accepts. Connections already authenticated stay
        so (Redis does not drop them): ``kill_clients`` makes everyone log in again."""
        if via == "config":
            reply = self.command("CONFIG", "SET", "requirepass", new)
        else:
            reply = self.command("ACL", "SETUSER", "default", "resetpass", f">{new}")
        assert reply.endswith("+OK\r\n"), reply
        self._current_password = new

    def restore_password(self, via: Literal["config", "acl"] = "config") -> None:
        self.set_password(self.password, via)

    def kill_clients(self, *kinds: str) -> None:
        """Disconnect every client of these kinds (normal, pubsub), as a failover or a
        restart would; the connection giving the command is spared."""
        for kind in kinds:
            assert "-ERR" not in self.command("CLIENT", "KILL", "TYPE", kind)

    def kill_command_clients(self) -> None:
        """Disconnect every client except subscribers (and the one asking): the pooled
        connections of a store, whose next command must connect and log in again, while
        its subscription (which would tell it at once) lives on."""
        for line in self.command("CLIENT", "LIST").splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "id" in fields and fields.get("cmd") not in ("subscribe", "client|list"):
                self.command("CLIENT", "KILL", "ID", fields["id"])


class CountingListener:
    """Listens on a dead Redis's port and counts the connections made to it, closing each
    at once (the client sees a reset, as from a Redis that is going away)."""

    def __init__(self, port: int) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(64)
        self._lock = threading.Lock()
        self._accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def accepted(self) -> int:
        with self._lock:
            return self._accepted

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with self._lock:
                self._accepted += 1
            conn.close()

    def __enter__(self) -> CountingListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone may not.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=5)


class RoundTripRelay:
    """A TCP relay in front of Redis that counts round trips: a round trip starts each
    time the client sends after the server has answered (or sends first on a connection).
    A pipeline is one round trip however many commands it carries; N commands awaited in
    turn are N."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.round_trips = 0
        self.port = 0

    async def __aenter__(self) -> RoundTripRelay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        server_w: asyncio.StreamWriter | None = None
        answered = [True]  # the client speaking first starts a round trip
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self._target_port)
            await asyncio.gather(
                self._pump(client_r, server_w, answered, to_server=True),
                self._pump(server_r, client_w, answered, to_server=False),
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            for writer in (client_w, server_w):
                if writer is not None:
                    writer.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        answered: list[bool],
        to_server: bool,
    ) -> None:
        while data := await reader.read(65536):
            if to_server and answered[0]:
                self.round_trips += 1
            answered[0] = not to_server
            writer.write(data)
            await writer.drain()
        writer.close()
