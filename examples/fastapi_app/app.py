"""FastAPI with the realtime server mounted under /rt: async and plain `def` routes
publish, and the page's JavaScript client connects through the prefix.

    uvicorn app:app --app-dir examples/fastapi_app --port 8000

Open http://127.0.0.1:8000/ and publish from another terminal:

    curl -X POST 'http://127.0.0.1:8000/notify?text=hello'        # an async route
    curl -X POST 'http://127.0.0.1:8000/notify-sync?text=hello'   # a plain def route

Set REALTIME_BROKER (redis://…, nats://…) to run several processes behind one balancer.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from realtime_asyncio import RealtimeServer

realtime = RealtimeServer(broker=os.environ.get("REALTIME_BROKER", "memory://"))

# A mounted application gets no lifespan events: the host's lifespan starts and stops the
# realtime server (and its broker) with the application.
app = FastAPI(lifespan=realtime.lifespan)
app.mount("/rt", realtime.asgi_app)


@app.post("/notify")
async def notify(text: str) -> dict[str, str]:
    """An async route: it runs on the event loop, and so does the broadcast."""
    return {"id": realtime.broadcast("news", "notice", {"text": text, "route": "async"})}


@app.post("/notify-sync")
def notify_sync(text: str) -> dict[str, str]:
    """A plain route: FastAPI runs it in a worker thread; the broadcast is handed to the
    loop and returns the message id once the loop has taken it."""
    return {"id": realtime.broadcast("news", "notice", {"text": text, "route": "sync"})}


PAGE = """<!doctype html>
<meta charset="utf-8">
<title>realtime_proto in FastAPI</title>
<h1>News</h1>
<ul id="news"></ul>
<script type="module">
  import { RealtimeClient } from '/rt/realtime.js';  // served by the mounted server

  const realtime = new RealtimeClient(location.origin + '/rt');  // the mount's prefix
  realtime.subscribe('news').on('notice', (data) => {
    const item = document.createElement('li');
    item.textContent = `${data.text} (from the ${data.route} route)`;
    document.getElementById('news').append(item);
  });
</script>
"""


@app.get("/", response_class=HTMLResponse)
async def page() -> str:
    return PAGE
