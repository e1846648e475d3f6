"""The embedded model, as a newcomer meets it through `streamgate serve`'s core: the topics its greeting
suggests are topics it can answer."""

from __future__ import annotations

import re

import grpc

from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc
from tests.conftest import CoreFactory, collect


async def test_each_topic_the_greeting_suggests_gets_its_own_answer(make_core: CoreFactory) -> None:
    # "Tell me about WebSockets" used to get the fallback ("You asked: ... I cannot really answer that").
    core = await make_core(model="streamgate/default", api_base=None, api_key=None, embedded_tokens_per_second=0)
    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = pb_grpc.StreamGateServiceStub(channel)
        greeting = (await collect(stub, pb.GenerateRequest(query="Hello!"))).completion.text
        suggested = re.search(r"Ask me about (.+?), or ", greeting)
        assert suggested, greeting
        topics = re.split(r", | or ", suggested.group(1))
        answers = {
            topic: (await collect(stub, pb.GenerateRequest(query=f"Tell me about {topic}"))).completion.text
            for topic in topics
        }

    assert topics == ["streaming", "gRPC", "Server-Sent Events", "WebSockets"]
    for topic, answer in answers.items():
        assert "You asked" not in answer, (topic, answer)  # not the fallback
        assert topic.lower() in answer.lower(), (topic, answer)  # about the topic asked for
        assert answer != greeting
    assert len(set(answers.values())) == len(topics), "each topic has an answer of its own"
