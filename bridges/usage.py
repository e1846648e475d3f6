"""`GET /v1/usage`: the usage ledger, read through the core's `GetUsage`.

    GET /v1/usage?group_by=model|key|day&since=2026-11-01&until=2026-12-01T00:00:00Z

Answers `{"object": "usage", "group_by": ..., "data": [{"group", "streams", "prompt_tokens",
"completion_tokens", "total_tokens", "cost_usd", "unpriced_streams"}, ...]}`: a group per model, key
holder or UTC day, counting the streams that started in the window. `cost_usd` sums the known costs
(null when no stream of the group has a price; `unpriced_streams` says how many were left out). With
authentication on, a key reads its own streams and an admin key (`--admins`) reads all. Errors come in
OpenAI's envelope, as on every /v1 path.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from streamgate.contract import StreamError, invalid
from streamgate.v1 import streamgate_pb2 as pb

from .openai_api import error_response
from .state import STATE

#: The query's parameters; anything else is a typo, answered as one.
_PARAMETERS = frozenset({"group_by", "since", "until"})


async def get_usage(request: web.Request) -> web.Response:
    query = request.query
    unknown = set(query) - _PARAMETERS
    if unknown:
        return error_response(invalid(f"unknown parameter(s): {', '.join(sorted(unknown))[:200]}"))
    if any(len(query.getall(name)) > 1 for name in query):
        return error_response(invalid("each parameter may be given once"))
    ask = pb.GetUsageRequest(
        group_by=query.get("group_by", "model"), since=query.get("since", ""), until=query.get("until", "")
    )
    try:
        answer = await request.app[STATE].client.usage(ask, request.headers.get("Authorization"))
    except StreamError as error:
        return error_response(error)
    return web.json_response({"object": "usage", "group_by": ask.group_by, "data": [_group(g) for g in answer.groups]})


def _group(group: pb.UsageGroup) -> dict[str, Any]:
    return {
        "group": group.group,
        "streams": group.streams,
        "prompt_tokens": group.prompt_tokens,
        "completion_tokens": group.completion_tokens,
        "total_tokens": group.prompt_tokens + group.completion_tokens,
        "cost_usd": group.cost_usd if group.HasField("cost_usd") else None,
        "unpriced_streams": group.unpriced_streams,
    }
