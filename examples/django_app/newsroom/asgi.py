"""The ASGI application: the realtime server under /rt, Django for everything else.

    uvicorn newsroom.asgi:application --app-dir examples/django_app --port 8000

Django's ASGI handler speaks HTTP only and ignores the lifespan, so this router sends
WebSocket and HTTP requests under /rt, and the lifespan events (which start and stop the
realtime server and its broker), to the realtime application.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "newsroom.settings")
django_application = get_asgi_application()

from newsroom.realtime import realtime  # noqa: E402  (after Django's settings are set up)

PREFIX = "/rt"


async def application(scope, receive, send):  # type: ignore[no-untyped-def]
    path = scope.get("path", "")
    if scope["type"] == "lifespan":
        await realtime.asgi_app(scope, receive, send)
    elif path == PREFIX or path.startswith(PREFIX + "/"):
        scope = dict(scope, root_path=scope.get("root_path", "") + PREFIX)
        await realtime.asgi_app(scope, receive, send)
    else:
        await django_application(scope, receive, send)
