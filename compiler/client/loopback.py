"""The loopback redirect of a native app's sign-in (RFC 8252 §7.3): a one-shot HTTP listener on
``127.0.0.1`` at a port the system picks, receiving the authorization response at ``/callback``.

Only the answer carrying this sign-in's ``state`` ends the wait; anything else that reaches the
port (another tab, a program probing it) gets a page saying so and changes nothing. The browser
is shown a short page: done, or what went wrong.
"""
from __future__ import annotations

import asyncio
import hmac
import html
import socket
from dataclasses import dataclass
from typing import Any

PATH = "/callback"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Redirect:
    """The query of the redirect that carried our ``state``."""

    params: dict[str, str]


def _page(title: str, text: str, status: int = 200) -> Any:
    from aiohttp import web

    body = (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<body style='font-family:sans-serif;margin:3em'><h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(text)}</p></body>")
    return web.Response(text=body, status=status, content_type="text/html",
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


class LoopbackReceiver:
    """``async with LoopbackReceiver(state) as receiver``: ``receiver.redirect_uri`` to send, then
    ``await receiver.wait(timeout)`` for the redirect's query."""

    def __init__(self, state: str, gateway: str) -> None:
        self._state, self._gateway = state, gateway
        self._done: asyncio.Future[Redirect] | None = None
        self._runner: Any = None
        self.redirect_uri = ""

    async def __aenter__(self) -> LoopbackReceiver:
        from aiohttp import web

        self._done = asyncio.get_running_loop().create_future()
        app = web.Application()
        app.router.add_get(PATH, self._callback)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((HOST, 0))
        site = web.SockSite(self._runner, sock)
        await site.start()
        self.redirect_uri = f"http://{HOST}:{sock.getsockname()[1]}{PATH}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait(self, timeout_s: float) -> Redirect:
        assert self._done is not None
        return await asyncio.wait_for(asyncio.shield(self._done), timeout_s)

    async def _callback(self, request: Any) -> Any:
        params = {k: v for k, v in request.query.items()}
        state = params.get("state", "")
        assert self._done is not None
        if self._done.done() or not hmac.compare_digest(state.encode(), self._state.encode()):
            return _page("Not this sign-in", "This page does not belong to the sign-in gwc is "
                         "waiting for. Start again from your application.", 400)
        self._done.set_result(Redirect(params))
        if "error" in params:
            return _page("Sign-in refused", f"{self._gateway} answered "
                         f"{params['error']}: {params.get('error_description', '')}".rstrip(": "))
        return _page("Back to gwc", f"gwc is finishing the sign-in to {self._gateway}. You can "
                     "close this tab.")
