"""Every case of the shipped behaviour suite runs once per runtime of this project."""

from realtime_behaviour import runtime_fixture

from .serving import BY_NAME

runtime = runtime_fixture(*BY_NAME.values())
