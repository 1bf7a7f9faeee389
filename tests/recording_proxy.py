"""A pass-through HTTP proxy in front of a real server that keeps every chat request's JSON body.

Why: to prove what the pipeline SENDS (seeds, temperatures, messages) over the wire, without
replacing the server: every request is forwarded unchanged and every answer streamed back.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from labs.core.serve import find_free_port


@contextmanager
def recording_proxy(upstream: str) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Run the proxy on a free port in a thread of its own (callers may block, or run subprocesses).

    Args:
        upstream: the real server's URL.

    Yields:
        (the proxy's URL, the list that collects the bodies of POST .../chat/completions, in order).
    """
    from aiohttp import ClientSession, web

    bodies: list[dict[str, Any]] = []

    async def forward(request: web.Request) -> web.StreamResponse:
        data = await request.read()
        if request.path.endswith("/chat/completions"):
            bodies.append(json.loads(data))
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        if "Authorization" in request.headers:  # the server's API key, sent by the client
            headers["Authorization"] = request.headers["Authorization"]
        async with ClientSession() as session, session.request(request.method, f"{upstream}{request.path_qs}",
                                                               data=data or None, headers=headers) as answer:
            reply = web.StreamResponse(status=answer.status, headers={"Content-Type": answer.content_type})
            await reply.prepare(request)
            async for piece in answer.content.iter_any():
                await reply.write(piece)
            return reply

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    port = find_free_port()
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, name="recording-proxy", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", bodies
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
