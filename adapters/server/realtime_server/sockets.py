"""One client socket served without a transport object (trio, gevent, the selectors
example): the non-blocking read, the direct non-blocking send from the loop, and the
hand-over to a writer once a send would block.

Runtime-neutral. A runtime subclasses `ClientSocket` once and supplies only its wake-ups:
`start_writer` (a task, a greenlet, a watch for writable readiness that then runs `drain`,
or `batches` over a TLS stream with the runtime's own blocking send) and `stop_reading`.
The rules it keeps are those of `docs/adapters.md`: nothing is pulled from the Node while a
send is in progress, one batch in flight at most, a close gets one last pull.
"""

from __future__ import annotations

import _socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

from realtime_proto.events import TransportId

if TYPE_CHECKING:
    from .base import ServerBase

__all__ = ["READ_BYTES", "ClientSocket"]

#: bytes asked of a socket per read
READ_BYTES = 65536


class ClientSocket:
    """The Node's side of one accepted socket: reading it, writing it, handing it over.

    `raw` is the non-blocking plain socket, or None for a socket whose bytes all go through
    the runtime's own stream (TLS): then every write is handed to the writer.
    """

    __slots__ = ("_unsent", "closing", "held", "id", "raw", "server")

    def __init__(self, server: ServerBase, transport_id: TransportId,
                 raw: _socket.socket | None) -> None:
        self.server = server
        self.id = transport_id
        self.raw = raw
        #: a writer has the socket: a send would block, or the socket is closing
        self.held = False
        #: `CloseTransport` came: the writer pulls once more, then the socket closes
        self.closing = False
        #: what a direct send left, for the writer
        self._unsent = b""

    # -- the runtime's part ----------------------------------------------------------------

    def start_writer(self) -> None:
        """Start the runtime's writer, which sends `drain()` (or `batches()` over TLS) and
        then calls `release()`."""
        raise NotImplementedError

    def stop_reading(self) -> None:
        """The socket's EOF was read: stop watching it for reads."""
        raise NotImplementedError

    # -- reading ---------------------------------------------------------------------------

    def receive(self) -> None:
        """The plain socket is readable: read once without blocking, give it to the Node and
        pump. At EOF (or a reset) `stop_reading` first, then the Node closes the socket."""
        raw = self.raw
        assert raw is not None
        server = self.server
        try:
            data = raw.recv(READ_BYTES)
        except BlockingIOError:
            return
        except OSError:  # reset
            data = b""
        if data:
            server.node.receive_data(self.id, data, now=server.now())
        else:
            self.stop_reading()
            server.node.receive_eof(self.id, now=server.now())
        server.pump()

    # -- writing ---------------------------------------------------------------------------

    def write(self) -> None:
        """`ServerBase.write` for this socket: send what the Node has at once, without
        blocking (no task switch per socket); a writer sends what the socket did not take.
        Nothing while a writer holds the socket: it pulls again once its send is done."""
        if self.held:
            return
        raw = self.raw
        if raw is None:
            self._hand_over(b"")
            return
        chunks = self.server.node.data_to_send(self.id)
        if not chunks:
            return
        data = b"".join(chunks)
        try:
            sent = raw.send(data)
        except OSError:  # it would block (BlockingIOError), or it failed: the writer sees
            sent = 0
        if sent < len(data):
            self._hand_over(data[sent:])

    def close(self) -> bool:
        """`CloseTransport`: the writer pulls once more, sends it and closes the socket.
        True the first time, when the runtime starts its grace timer."""
        if self.closing:
            return False
        self.closing = True
        if not self.held:
            self._hand_over(b"")
        return True

    def _hand_over(self, unsent: bytes) -> None:
        self._unsent = unsent
        self.held = True
        self.start_writer()

    def batches(self) -> Iterator[bytes]:
        """For the writer: what a direct send left, then one batch per pull until the Node
        has nothing more. The next pull happens only once the writer asks for the next
        batch, after its send: meanwhile the Node's buffer (and its slow-consumer rule)
        holds the rest. A closing socket's batches end after the pull that followed the
        close; an open one's when the Node has nothing more, and it is no longer `held`:
        direct sends resume (nothing runs between that and the writer's `release`)."""
        if self._unsent:
            unsent, self._unsent = self._unsent, b""
            yield unsent
        node = self.server.node
        while True:
            closing = self.closing
            chunks = node.data_to_send(self.id)
            if chunks:
                yield b"".join(chunks)
            if closing or not chunks:
                self.held = closing
                return

    def drain(self) -> Iterator[None]:
        """For the writer of a plain socket: `batches` sent with non-blocking sends,
        pausing (a `yield`) whenever the socket would block; resume it once writable.
        A failed send raises its OSError."""
        raw = self.raw
        assert raw is not None
        for data in self.batches():
            view = memoryview(data)
            while view:
                try:
                    view = view[raw.send(view):]
                except BlockingIOError:
                    yield

    def release(self) -> bool:
        """The writer stopped: True to close the socket now (it was closing and its last
        bytes are out, or a send failed, or the writer was cancelled); False when its
        batches ran out with the socket open, which is back to direct sends."""
        return self.held
