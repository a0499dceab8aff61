"""A loopback TCP proxy a test puts between a client and a service (PostgreSQL, Redis,
RabbitMQ) to inject network faults for real, without root and without touching the
server:

* :meth:`TcpProxy.stop` / :meth:`TcpProxy.start` — the service goes away (open
  connections cut, new ones refused: nothing listens) and comes back on the same port;
* :meth:`TcpProxy.sever` — every open connection (or one, by the client's port) is cut,
  as a server restart or a failover does to its clients; new ones are accepted;
* :meth:`TcpProxy.stall` — bytes stop moving (both ways or one way, on every connection
  or one) while every socket stays open: a hung server, a black-holed network path. New
  connections stall too until :meth:`TcpProxy.restore`, which delivers what was held (a
  connection stalled on its own, by its client's port, stays stalled: a dead path).

Two threads per connection, one per direction. A stalled direction stops reading (so the
sender's buffers fill, as with a real stall) and holds what it had read.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

UP, DOWN = "up", "down"  # client → server, server → client


class _Link:
    """One proxied connection: the client's socket, the server's, a gate per direction."""

    def __init__(self, client: socket.socket, server: socket.socket, stalled: set[str]) -> None:
        self.client = client
        self.server = server
        #: The client's own local port (what a test finds on its connection's socket).
        self.client_port: int = client.getpeername()[1]
        self.gates = {UP: threading.Event(), DOWN: threading.Event()}
        for direction, gate in self.gates.items():
            if direction not in stalled:
                gate.set()
        self.closed = threading.Event()
        #: Stalled on its own (by client port): only ``restore(client_port=...)`` ends it.
        self.pinned = False

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; see the module docstring."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        #: Connections accepted so far.
        self.accepted = 0
        self._listener: socket.socket | None = None
        self._links: set[_Link] = set()
        self._stalled: set[str] = set()  # the directions new connections start stalled in
        self._lock = threading.Lock()
        self.start()

    # -- the service going away and coming back ---------------------------------------

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> None:
        """Listen (again, on the same port once it had one)."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(
            target=self._accept, args=(listener,), name="tcp-proxy-accept", daemon=True
        ).start()

    def stop(self) -> None:
        """The service is gone: open connections cut, new ones refused."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self.sever()

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        self.stop()
        try:
            yield
        finally:
            self.start()

    def close(self) -> None:
        """Stop for good (the end of a test)."""
        self.stop()

    # -- faults on open connections --------------------------------------------------

    def sever(self, client_port: int | None = None) -> int:
        """Cut every open connection (or the one from ``client_port``); how many."""
        with self._lock:
            links = [link for link in self._links if client_port in (None, link.client_port)]
            self._links.difference_update(links)
        for link in links:
            link.close()
        return len(links)

    def stall(self, *, direction: str | None = None, client_port: int | None = None) -> None:
        """Stop forwarding (``direction`` ``"up"`` or ``"down"``, else both ways) on
        every connection, new ones included, or only on the one from ``client_port``."""
        directions = {direction} if direction else {UP, DOWN}
        with self._lock:
            if client_port is None:
                self._stalled |= directions
            links = [link for link in self._links if client_port in (None, link.client_port)]
        for link in links:
            link.pinned = link.pinned or client_port is not None
            for d in directions:
                link.gates[d].clear()

    def restore(self, *, client_port: int | None = None) -> None:
        """Forward again (what a stall held is delivered): on every connection but those
        stalled on their own, or only on the one from ``client_port``."""
        with self._lock:
            if client_port is None:
                self._stalled.clear()
            links = [link for link in self._links if client_port in (None, link.client_port)]
        for link in links:
            if link.pinned and client_port is None:
                continue
            link.pinned = False
            for gate in link.gates.values():
                gate.set()

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._links)

    # -- forwarding ---------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # stopped meanwhile
                    client.close()
                    server.close()
                    return
                link = _Link(client, server, self._stalled)
                self._links.add(link)
                self.accepted += 1
            for src, dst, direction in ((client, server, UP), (server, client, DOWN)):
                threading.Thread(
                    target=self._pipe,
                    args=(link, src, dst, link.gates[direction]),
                    name=f"tcp-proxy-{direction}",
                    daemon=True,
                ).start()

    def _pipe(
        self, link: _Link, src: socket.socket, dst: socket.socket, gate: threading.Event
    ) -> None:
        try:
            while not link.closed.is_set():
                while not gate.wait(0.05):  # stalled: read nothing more
                    if link.closed.is_set():
                        return
                data = src.recv(65536)
                if not data:
                    return
                while not gate.wait(0.05):  # stalled while this was in hand: hold it
                    if link.closed.is_set():
                        return
                dst.sendall(data)
        except OSError:
            return
        finally:
            with self._lock:
                self._links.discard(link)
            link.close()
