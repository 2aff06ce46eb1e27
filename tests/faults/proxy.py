"""A loopback TCP proxy in front of the broker that can stop passing one direction on demand,
or keep its clients out for a while.

Used to kill the MQTT ingestor *after* COMMIT but *before* its PUBACK reaches the broker, with
no hook in the ingestor itself: while the proxy holds, everything the ingestor sends (its
PUBACKs) is swallowed, so every batch that commits meanwhile is committed and unacknowledged.
Killing the ingestor then and cutting its connection leaves the broker to redeliver them.
While ``refusing``, new connections are closed at once: that decides which client gets back
to a restarted broker first.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class HoldingProxy:
    target_port: int
    holding: threading.Event = field(default_factory=threading.Event)
    refusing: threading.Event = field(default_factory=threading.Event)
    swallowed_bytes: int = 0
    _sockets: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            if self.refusing.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if from_client and self.holding.is_set():
                    with self._lock:
                        self.swallowed_bytes += len(data)
                    continue
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.close()

    def hold(self) -> None:
        """From now on, bytes from clients to the broker are swallowed."""
        self.holding.set()

    def refuse(self) -> None:
        """Turn new connections away (existing ones carry on)."""
        self.refusing.set()

    def admit(self) -> None:
        self.refusing.clear()

    def cut(self) -> None:
        """Close every proxied connection (the broker sees its client vanish); new ones pass."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.holding.clear()

    def close(self) -> None:
        self._listener.close()
        self.cut()
