"""Raw HTTP calls to the public endpoints, counted before Gradio reads them.

    curl -X POST http://127.0.0.1:7860/gradio_api/call/compare -H 'Content-Type: application/json' \
         -d '{"data": ["portrait photo of a man", ["hat"]]}'
    -> 422 {"detail": "/compare takes 9 data items (prompt, negative_prompts, seed, steps, guidance_scale, size,
        model, rows, scheduler), in this order; got 2"}

Gradio maps a ``/call/NAME`` body's ``data`` list onto the endpoint's inputs by position: it fails with no message
for the caller when items are missing, and drops extra items unseen. ``CountDataItems`` is an ASGI middleware (given
to ``launch(app_kwargs=...)`` by ``negprompt.app.layout.launch_options``) that answers such a call itself, naming
the count and the order. Every other request, and a body that is not a JSON object with a ``data`` list (Gradio's
own check answers it), passes through untouched.
"""

from __future__ import annotations

import json
import re

# The public endpoints' parameters, in the order a raw call sends them (``negprompt.app.layout._api_endpoints``).
COMPARE = ("prompt", "negative_prompts", "seed", "steps", "guidance_scale", "size", "model", "rows", "scheduler")
ENDPOINTS = {"compare": COMPARE, "explore": (*COMPARE[:2], "mode", *COMPARE[2:])}
CALL = re.compile(r".*/call/(\w+)/?")  # /gradio_api/call/compare (not /call/v2/..., which names its items)


def count_problem(name: str, body: bytes) -> str | None:
    """The refusal for a ``/call/NAME`` body whose ``data`` has the wrong number of items; None otherwise."""
    expected = ENDPOINTS.get(name)
    try:
        data = json.loads(body).get("data") if expected else None
    except (ValueError, AttributeError):  # not JSON, or not an object: Gradio's own validation answers
        return None
    if not isinstance(data, list) or len(data) == len(expected):
        return None
    return (f"/{name} takes {len(expected)} data items ({', '.join(expected)}), in this order; got {len(data)}")


class CountDataItems:
    """ASGI middleware: a POST to ``/call/compare`` or ``/call/explore`` with too few or too many data items gets a
    422 naming the expected count."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        match = CALL.fullmatch(scope.get("path", "")) if scope["type"] == "http" and scope["method"] == "POST" \
            else None
        if match is None or match[1] not in ENDPOINTS:
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        problem = count_problem(match[1], body)
        if problem is not None:
            payload = json.dumps({"detail": problem}).encode()
            await send({"type": "http.response.start", "status": 422,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
