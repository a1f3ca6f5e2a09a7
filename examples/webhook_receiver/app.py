"""A backend that receives the server's presence webhooks (docs/webhooks.md), on Starlette.

    REALTIME_WEBHOOK_SECRET=change-me uvicorn app:app --port 8000
    realtime serve --webhook http://127.0.0.1:8000/realtime/events --webhook-secret change-me

It checks each body's signature, skips events it has seen (a retried batch whose first
answer was lost), and keeps who is online per channel: `GET /online`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections import OrderedDict

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SECRET = os.environ.get("REALTIME_WEBHOOK_SECRET", "change-me").encode()

#: channel -> users online (member.added / member.removed)
online: dict[str, set[str]] = {}
#: the ids of the last events handled (a bounded memory of them)
seen: OrderedDict[str, None] = OrderedDict()


def signed(body: bytes, signature: str | None) -> bool:
    """Whether `X-Realtime-Signature` is the HMAC-SHA256 of the body with our secret."""
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    return signature is not None and hmac.compare_digest(signature, expected)


async def realtime_events(request: Request) -> Response:
    body = await request.body()
    if not signed(body, request.headers.get("x-realtime-signature")):
        return JSONResponse({"error": "bad signature"}, status_code=401)  # never retried
    for event in json.loads(body)["events"]:
        if event["id"] in seen:
            continue
        seen[event["id"]] = None
        if len(seen) > 100_000:
            seen.popitem(last=False)
        users = online.setdefault(event["channel"], set())
        if event["name"] == "member.added":
            users.add(event["user_id"])
        elif event["name"] == "member.removed":
            users.discard(event["user_id"])
        elif event["name"] == "channel.vacated":
            del online[event["channel"]]
    return Response(status_code=204)  # any 2xx: delivered; 5xx: sent again later


async def who_is_online(request: Request) -> Response:
    return JSONResponse({channel: sorted(users) for channel, users in online.items()})


app = Starlette(routes=[
    Route("/realtime/events", realtime_events, methods=["POST"]),
    Route("/online", who_is_online),
])
