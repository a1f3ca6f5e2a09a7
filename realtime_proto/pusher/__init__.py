"""The Pusher Channels protocol (version 7) as a second wire codec on the same Hub.

`apps` holds the configured applications and their signatures, `codec` translates
between Pusher frames and the Hub's messages, `wire` is that translation as the Node's
wire codec (`realtime_proto.wire`), `routes` the front-door routes (`/app/{key}`, the
HTTP API that `api` answers). All pure: the Node routes bytes to them.
"""

from .apps import PusherApp, parse_app

__all__ = ["PusherApp", "parse_app"]
