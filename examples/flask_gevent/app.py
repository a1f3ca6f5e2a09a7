"""Flask under gevent, with the realtime server (realtime_gevent) in the same process.

    python examples/flask_gevent/app.py --port 8000 --realtime-port 6001

Open http://127.0.0.1:8000/ and publish from another terminal:

    curl -X POST http://127.0.0.1:8000/notify -H 'content-type: application/json' \\
         -d '{"text": "hello"}'

Flask serves the pages and the application's API; the realtime server listens on its own
port (WebSocket, SSE, long-polling), because a WSGI server cannot hold a WebSocket. Views
run in greenlets of the hub's thread and publish directly; work sent to a real thread
(gevent's threadpool) may publish too: the call is handed to the hub.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after monkey-patching, as gevent asks)
import signal  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from flask import Flask, Response, request, send_file  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from realtime_gevent import RealtimeServer  # noqa: E402
from realtime_server.edge import client_script  # noqa: E402

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>realtime_proto with Flask and gevent</title>
<h1>News</h1>
<ul id="news"></ul>
<script type="module">
  import { RealtimeClient } from '/realtime.js';

  const realtime = new RealtimeClient(`ws://${location.hostname}:REALTIME_PORT`);
  realtime.subscribe('news').on('notice', (data) => {
    const item = document.createElement('li');
    item.textContent = data.text;
    document.getElementById('news').append(item);
  });
</script>
"""


def create_app(realtime: RealtimeServer) -> Flask:
    """The Flask application; it publishes through `realtime`, which must be started."""
    app = Flask(__name__)

    @app.get("/")
    def page() -> str:
        return PAGE.replace("REALTIME_PORT", str(realtime.port))

    @app.get("/realtime.js")
    def script() -> Response:
        path = client_script()
        assert path is not None, "the JavaScript client is not installed"
        return send_file(path, mimetype="text/javascript")

    @app.post("/notify")
    def notify() -> dict[str, str]:
        """Publish from the view (a greenlet on the hub's thread)."""
        text = str(request.get_json()["text"])
        return {"id": realtime.broadcast("news", "notice", {"text": text})}

    @app.post("/report")
    def report() -> dict[str, str]:
        """Do the work in a real OS thread (gevent's threadpool), which publishes."""
        text = str(request.get_json()["text"])

        def work() -> str:
            summary = f"report: {text.upper()}"  # stands for slow, blocking work
            return realtime.broadcast("news", "notice", {"text": summary})

        return {"id": gevent.get_hub().threadpool.spawn(work).get()}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="Flask's port (0: any)")
    parser.add_argument("--realtime-port", type=int, default=6001, help="0: any")
    parser.add_argument("--broker", default="memory://", help="redis://…, nats://…")
    args = parser.parse_args()

    realtime = RealtimeServer(host=args.host, port=args.realtime_port, broker=args.broker)
    realtime.start()
    http = WSGIServer((args.host, args.port), create_app(realtime), log=None)
    http.start()
    print(f"flask http://{args.host}:{http.server_port}", flush=True)
    print(f"realtime ws://{args.host}:{realtime.port}", flush=True)

    stopping = gevent.event.Event()
    handlers = [gevent.signal_handler(signum, stopping.set)
                for signum in (signal.SIGINT, signal.SIGTERM)]
    stopping.wait()
    for handler in handlers:
        handler.cancel()
    http.stop(timeout=5)
    realtime.stop()


if __name__ == "__main__":
    main()
