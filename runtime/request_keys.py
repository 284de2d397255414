"""Per-request values set by the request middleware and read by the handlers."""
from aiohttp import web

REQUEST_ID = web.RequestKey("request_id", str)
STARTED = web.RequestKey("started", float)  # time.perf_counter() when the request arrived
CLIENT_REQUEST_ID = web.RequestKey[str | None]("client_request_id")  # X-Request-Id a client sent
