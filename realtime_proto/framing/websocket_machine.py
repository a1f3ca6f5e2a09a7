"""The WebSocketFraming state machine: its states, its inputs and its transition table
(rendered in docs/design.md, walked by tests/core/test_machines.py)."""

from __future__ import annotations

import enum

from realtime_proto.machine import Machine

__all__ = ["WEBSOCKET_MACHINE", "WebSocketInput", "WebSocketState"]


class WebSocketState(enum.Enum):
    """Where a WebSocketFraming is in the connection's life (RFC 6455 §4, §7)."""

    #: waiting for accept() to validate the opening handshake
    CONNECTING = "connecting"
    #: messages flow both ways
    OPEN = "open"
    #: our Close frame is out; waiting for the peer's (§7.1.2) or close_timeout
    CLOSING = "closing"
    #: finished: the adapter closes the socket once data_to_send() is drained
    CLOSED = "closed"
    #: the peer closed the TCP connection (receive_eof()): finished, and no more bytes
    #: may be fed
    DISCONNECTED = "disconnected"


class WebSocketInput(enum.Enum):
    """What moves a WebSocketFraming: the caller's calls, and what the peer did."""

    #: accept() with a valid handshake
    ACCEPT = "accept"
    #: accept() with a handshake refused (400, 405, 426): from the peer, never refused
    REJECT = "reject"
    #: receive_data()
    DATA = "data"
    #: receive_eof()
    EOF = "eof"
    #: send_encoded()
    SEND = "send"
    #: close()
    CLOSE = "close"
    #: the peer's Close frame arrived (from the peer)
    PEER_CLOSE = "peer_close"
    #: the peer broke the protocol or stayed silent past idle_timeout (from the peer)
    FAIL = "fail"
    #: close_timeout passed without the peer's Close (from the clock)
    TIMEOUT = "timeout"


_CONNECTING = WebSocketState.CONNECTING
_OPEN = WebSocketState.OPEN
_CLOSING = WebSocketState.CLOSING
_CLOSED = WebSocketState.CLOSED
_DISCONNECTED = WebSocketState.DISCONNECTED
_ACCEPT, _REJECT, _DATA, _EOF, _SEND, _CLOSE, _PEER_CLOSE, _FAIL, _TIMEOUT = WebSocketInput

#: The WebSocketFraming transition table (rendered in docs/design.md).
WEBSOCKET_MACHINE = Machine("WebSocketFraming", WebSocketState, WebSocketInput, {
    (_CONNECTING, _ACCEPT): _OPEN,
    (_CONNECTING, _REJECT): _CLOSED,
    (_CONNECTING, _EOF): _DISCONNECTED,
    (_CONNECTING, _CLOSE): _CLOSED,
    (_OPEN, _DATA): _OPEN,
    (_OPEN, _EOF): _DISCONNECTED,
    (_OPEN, _SEND): _OPEN,
    (_OPEN, _CLOSE): _CLOSING,
    (_OPEN, _PEER_CLOSE): _CLOSED,
    (_OPEN, _FAIL): _CLOSED,
    # after our Close the peer's data is read and dropped (§7.1.2), and so is ours
    (_CLOSING, _DATA): _CLOSING,
    (_CLOSING, _EOF): _DISCONNECTED,
    (_CLOSING, _SEND): _CLOSING,
    (_CLOSING, _CLOSE): _CLOSING,
    (_CLOSING, _PEER_CLOSE): _CLOSED,
    (_CLOSING, _FAIL): _CLOSED,
    (_CLOSING, _TIMEOUT): _CLOSED,
    # finished: bytes are ignored; frames still go out ahead of a Close not yet written
    (_CLOSED, _DATA): _CLOSED,
    (_CLOSED, _EOF): _DISCONNECTED,
    (_CLOSED, _SEND): _CLOSED,
    (_CLOSED, _CLOSE): _CLOSED,
    (_DISCONNECTED, _EOF): _DISCONNECTED,
    (_DISCONNECTED, _SEND): _DISCONNECTED,
    (_DISCONNECTED, _CLOSE): _DISCONNECTED,
}, peer_inputs=[_REJECT, _PEER_CLOSE, _FAIL, _TIMEOUT])
# the hot paths test these pairs by identity rather than looking them up
WEBSOCKET_MACHINE.stays(_OPEN, _DATA)
WEBSOCKET_MACHINE.stays(_OPEN, _SEND)
