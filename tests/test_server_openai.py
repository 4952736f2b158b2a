"""The official ``openai`` client against the live server: retrieve, completions, streaming
chat, and errors it parses (the OpenAI error shape), as a new user would call it."""

from __future__ import annotations

import pytest

from test_server_live import LiveServer

openai = pytest.importorskip("openai")


def test_the_openai_client_works_end_to_end():
    with LiveServer(step_delay=0.0) as live:
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="none", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny"]
        assert client.models.retrieve("tiny").id == "tiny"
        with pytest.raises(openai.NotFoundError, match="gpt-9"):
            client.models.retrieve("gpt-9")
        out = client.completions.create(model="tiny", prompt="abc", max_tokens=5, temperature=0)
        assert out.choices[0].finish_reason in ("stop", "length") and out.usage.total_tokens > 3
        chunks = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=6,
            temperature=0,
            stream=True,
        )
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert reasons[-1] in ("stop", "length")
        with pytest.raises(openai.BadRequestError, match="presence_penalty is not supported"):
            client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], presence_penalty=1
            )
        with pytest.raises(openai.BadRequestError, match="seed"):
            client.completions.create(model="tiny", prompt="a", seed=2**64, temperature=1)
