"""realtime_server: the runtime-neutral server layer every runtime builds on (`ServerBase`,
the settings and the edge: clock, ids, TLS, static files). It imports no runtime."""
