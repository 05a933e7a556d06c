"""The web server's guard against slow and vanishing clients: an ASGI middleware in front of the page's app.

* Request bodies must keep coming: a client that sends nothing for `idle_s` seconds, or has not finished
  its body after `total_s` seconds, gets `408 Request Timeout` and its connection closes. Without this a
  few hundred connections that announce a large upload and then trickle (or send nothing) hold the server's
  sockets and memory for as long as they like (the probe held 200 for 30 s). Only the body is timed: once a
  request is read, the app may take its time, and the page's event streams wait for as long as they are open.
* A client that disconnects during its upload (a closed tab, a cancelled request) costs one line on the
  console instead of the ~70-line `ClientDisconnect` traceback the server printed for each one.

Headers are the HTTP server's business (uvicorn); this guard sees a request only once its headers are in.
`web.serve` installs it through Gradio's `app_kwargs` (FastAPI's `middleware` list).
"""

from __future__ import annotations

import asyncio
import sys
import time


class BodyTimeout(Exception):
    """A request body that stopped arriving (or came too slowly); answered with 408."""


class RequestGuard:
    """ASGI middleware: `RequestGuard(app, idle_s=15, total_s=300)`; `log(line)` gets the one-line notes."""

    def __init__(self, app, idle_s: float = 15.0, total_s: float = 300.0, log=None) -> None:
        self.app, self.idle_s, self.total_s = app, float(idle_s), float(total_s)
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        deadline = time.monotonic() + self.total_s
        state = {"body_done": False, "started": False, "bytes": 0}

        async def timed_receive():
            if state["body_done"]:  # the body is in: waits from here on are the app's (e.g. a disconnect watch)
                return await receive()
            left = min(self.idle_s, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), timeout=max(left, 0.0))
            except asyncio.TimeoutError:
                raise BodyTimeout from None
            if message["type"] == "http.request":
                state["bytes"] += len(message.get("body", b""))
                state["body_done"] = not message.get("more_body", False)
            return message

        async def tracked_send(message):
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except BodyTimeout:
            why = (f"not complete after {self.total_s:g} s" if time.monotonic() >= deadline
                   else f"nothing for {self.idle_s:g} s")
            self.log(f"linearsr: {_what(scope)}: request body too slow ({state['bytes']} bytes, {why}); "
                     f"answered 408")
            if not state["started"]:
                await _answer_408(send)
        except Exception as e:  # noqa: BLE001  (the ClientDisconnect of starlette, named without importing it)
            if type(e).__name__ != "ClientDisconnect":
                raise
            self.log(f"linearsr: {_what(scope)}: the client went away during its request "
                     f"({state['bytes']} bytes received)")


def _what(scope) -> str:
    client = scope.get("client") or ("?", 0)
    return f"{scope.get('method', '?')} {scope.get('path', '?')} from {client[0]}"


async def _answer_408(send) -> None:
    body = b"request body too slow\n"
    await send({"type": "http.response.start", "status": 408,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
