"""realtime_server: the runtime-neutral server layer every runtime builds on (`ServerBase`,
the settings and the edge: clock, ids, TLS, static files; `ClientSocket`, a plain socket's
read, write and writer hand-over; the `realtime` command and its `--workers` supervisor).
It imports no runtime; the command loads the one asked for by name."""
