"""Every case of the behaviour suite, for `from realtime_behaviour.cases import *` in a test
module: pytest collects the imported functions there, once per `runtime` the conftest gives."""

from .bad_input import *  # noqa: F403
from .bad_input import __all__ as _bad_input
from .compression import *  # noqa: F403
from .compression import __all__ as _compression
from .keepalive import *  # noqa: F403
from .keepalive import __all__ as _keepalive
from .lifecycle import *  # noqa: F403
from .lifecycle import __all__ as _lifecycle
from .sockets import *  # noqa: F403
from .sockets import __all__ as _sockets
from .transports import *  # noqa: F403
from .transports import __all__ as _transports

__all__ = [*_transports, *_lifecycle, *_bad_input, *_keepalive, *_compression, *_sockets]
