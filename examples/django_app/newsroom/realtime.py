"""The process's one realtime server. `newsroom.asgi` serves it under /rt and starts it
with the ASGI lifespan; views and signal handlers publish through it from any thread."""

from django.conf import settings

from realtime_asyncio import RealtimeServer

realtime = RealtimeServer(broker=settings.REALTIME_BROKER)
