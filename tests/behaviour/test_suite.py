"""The shipped behaviour suite (`realtime_behaviour`), run as an outside adapter runs it."""

from realtime_behaviour.cases import *  # noqa: F403
