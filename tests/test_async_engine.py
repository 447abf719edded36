"""AsyncEngine: concurrent streams equal transformers' greedy output, deltas add up to the
text, leaving a stream early (break, abort, cancel) gives every KV block back, and a bad
request raises its typed error without disturbing the others.

Each test drives its own event loop with asyncio.run; one engine serves the module."""

import asyncio

import pytest

from tests.reference import load_reference, reference_greedy
from tome import AsyncEngine, EngineConfig, SamplingParams
from tome.errors import InvalidRequestError, PromptTooLongError, RequestAbortedError, TomeError

PROMPTS = ["The capital of France is", "Once upon a time there was", "1, 2, 3,", "长文本"]
HANG_GUARD_S = 120  # a broken engine thread must fail the test, not hang the run


@pytest.fixture(scope="module")
def engine(tiny_llama):
    engine = AsyncEngine(EngineConfig(model=str(tiny_llama), kv_cache_memory=64 << 20))
    yield engine
    engine.shutdown()
    assert not engine._thread.is_alive()


@pytest.fixture(scope="module")
def expected(tiny_llama, hf_tokenizer):
    """transformers' greedy tokens for PROMPTS."""
    reference = load_reference(tiny_llama)
    return [reference_greedy(reference, hf_tokenizer.encode(p), 10)[0] for p in PROMPTS]


def run(coro):
    async def guarded():
        return await asyncio.wait_for(coro, HANG_GUARD_S)

    return asyncio.run(guarded())


def greedy(max_tokens: int = 10) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


async def collect(engine, prompt, params, request_id) -> list:
    return [out async for out in engine.generate(prompt, params, request_id)]


async def wait_until_idle(engine) -> None:
    """Aborts travel to the engine thread through a queue: wait for them to land."""
    blocks = engine.engine.block_manager
    while engine.engine.has_unfinished() or blocks.num_free_blocks != blocks.num_blocks:
        await asyncio.sleep(0.01)


def assert_idle(engine) -> None:
    run(wait_until_idle(engine))
    blocks = engine.engine.block_manager
    assert blocks.num_free_blocks == blocks.num_blocks  # cached blocks count as free
    assert engine.engine.requests == {}


def test_concurrent_streams_equal_transformers(engine, hf_tokenizer, expected):
    async def main():
        return await asyncio.gather(
            *(collect(engine, p, greedy(), f"concurrent-{i}") for i, p in enumerate(PROMPTS))
        )

    streams = run(main())
    for prompt, outputs, tokens in zip(PROMPTS, streams, expected, strict=True):
        final = outputs[-1]
        assert [out.finished for out in outputs] == [False] * (len(outputs) - 1) + [True]
        assert final.finish_reason == "length"
        assert final.prompt_token_ids == hf_tokenizer.encode(prompt)
        assert final.token_ids == tokens
        assert final.text == hf_tokenizer.decode(tokens, skip_special_tokens=True)
        assert "".join(out.delta_text for out in outputs) == final.text
        assert [t for out in outputs for t in out.delta_token_ids] == final.token_ids
    assert_idle(engine)


def spy_on_aborts(engine, monkeypatch) -> list:
    """Record what Engine.abort returned: None means the request had already finished."""
    results = []
    original = engine.engine.abort

    def abort(request_id):
        results.append(original(request_id))
        return results[-1]

    monkeypatch.setattr(engine.engine, "abort", abort)
    return results


def test_breaking_out_of_a_stream_aborts_and_frees_the_blocks(engine, monkeypatch):
    aborts = spy_on_aborts(engine, monkeypatch)

    async def main():
        seen = 0
        async for _ in engine.generate(PROMPTS[1], greedy(900), "break-early"):
            seen += 1
            if seen == 3:
                break
        await wait_until_idle(engine)

    run(main())
    assert len(aborts) == 1 and aborts[0] is not None
    assert aborts[0].request_id == "break-early"
    assert aborts[0].finish_reason == "abort"
    assert 3 <= len(aborts[0].token_ids) < 900
    assert_idle(engine)


def test_abort_by_id_ends_the_stream(engine):
    async def main():
        outputs = []
        async for out in engine.generate(PROMPTS[0], greedy(900), "explicit-abort"):
            outputs.append(out)
            if len(outputs) == 2:
                await engine.abort("explicit-abort")
        await engine.abort("no-such-request")  # unknown ids are ignored
        return outputs

    outputs = run(main())
    assert outputs[-1].finish_reason == "abort"
    assert len(outputs[-1].token_ids) < 900
    assert all(not out.finished for out in outputs[:-1])
    assert_idle(engine)


def test_cancelling_the_consumer_aborts_the_request(engine):
    async def main():
        first = asyncio.Event()

        async def consume():
            async for _ in engine.generate(PROMPTS[2], greedy(900), "cancelled"):
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until_idle(engine)

    run(main())
    assert_idle(engine)


def test_bad_requests_raise_typed_errors_and_others_are_unaffected(engine, expected):
    async def failing(prompt, params, request_id):
        return await collect(engine, prompt, params, request_id)

    async def main():
        blocker = engine.generate(PROMPTS[0], greedy(900), "taken-id")
        await blocker.__anext__()  # "taken-id" is now running
        results = await asyncio.gather(
            collect(engine, PROMPTS[0], greedy(), "good-0"),
            failing([5] * 2000, greedy(), "too-long"),  # window: 1024
            failing(1.5, greedy(), "not-a-prompt"),
            failing(PROMPTS[1], greedy(), "taken-id"),
            collect(engine, PROMPTS[1], greedy(), "good-1"),
            return_exceptions=True,
        )
        await blocker.aclose()
        return results

    good0, too_long, not_a_prompt, duplicate, good1 = run(main())
    for error, error_type in (
        (too_long, PromptTooLongError),
        (not_a_prompt, InvalidRequestError),
        (duplicate, InvalidRequestError),
    ):
        assert isinstance(error, TomeError) and type(error) is error_type
        assert str(error) and "\n" not in str(error)
    assert good0[-1].token_ids == expected[0]
    assert good1[-1].token_ids == expected[1]
    assert_idle(engine)
    # and the engine keeps serving
    assert run(collect(engine, PROMPTS[3], greedy(), "after"))[-1].token_ids == expected[3]


def test_shutdown_ends_open_streams_and_refuses_new_requests(tiny_llama):
    engine = AsyncEngine(EngineConfig(model=str(tiny_llama), kv_cache_memory=16 << 20))

    async def main():
        outputs = []
        with pytest.raises(RequestAbortedError) as exc_info:
            async for out in engine.generate(PROMPTS[0], greedy(900), "open"):
                outputs.append(out)
                if len(outputs) == 1:
                    await asyncio.to_thread(engine.shutdown)
        assert "\n" not in str(exc_info.value)
        assert not engine._thread.is_alive()
        with pytest.raises(RequestAbortedError):
            await collect(engine, PROMPTS[1], greedy(), "late")

    run(main())
