"""Kimi Linear (KDA linear attention + NoPE latent attention + DeepSeek-V3 MoE) against
transformers: the KDA kernels equal transformers' torch fallbacks; tiny random models
saved by transformers, in two layer patterns (dense first layer or none, q_lora on and
off, grouped routing, one and two shared experts), give transformers' greedy tokens and
logprobs for prompts past several KDA chunks and KV blocks, prefilled whole or in small
chunks, batched or alone, preempted and recomputed; prefix-cache hits and named contexts
resume from state checkpoints, which go down to host memory and disk with their blocks
and come back with them, and a conversation's next turn resumes after the answer, all
with the same outputs; the recurrent state pool gets every slot back and keeps its
checkpoints within their bounds; the memory plan counts the state pool as the engine
does; bad configs and budgets are refused with one line."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers.models.kimi_linear import modeling_kimi_linear as hf_kimi

from tests.conftest import TINY_FIELDS
from tests.reference import load_reference, reference_greedy
from tests.test_bad_input import assert_one_line
from tests.test_engine_equality import MAX_NEW, TOP, greedy_params, random_prompts
from tests.test_moe_models import save_random_moe
from tome import LLM, SamplingParams
from tome.engine.config import EngineConfig
from tome.engine.memory_plan import StatePlan, plan_memory
from tome.engine.outputs import RequestOutput
from tome.engine.sequence import Sequence
from tome.engine.state_checkpoints import (
    PER_ANSWER,
    PER_SEQUENCE,
    StateCheckpoints,
    checkpoint_block,
)
from tome.errors import InvalidRequestError, ModelLoadError
from tome.layers import kda_ops
from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.kda_ops import chunk_kda, recurrent_kda_step
from tome.layers.kimi_delta_attention import KimiDeltaAttention
from tome.layers.latent_attention import LatentAttention
from tome.layers.layer_state import StateCheckpoint
from tome.layers.short_conv import ShortConvolution
from tome.models.config import ModelConfig

KDA, MLA = "linear_attention", "full_attention"
COMMON = {
    **TINY_FIELDS,
    "num_hidden_layers": 4,
    "num_key_value_heads": 4,
    "pad_token_id": 0,
    "intermediate_size": 96,
    "moe_intermediate_size": 32,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 24,
    "num_experts_per_tok": 2,
    "routed_scaling_factor": 2.0,
}
KIMI_MODELS = {
    "kda_first_dense": dict(
        layer_types=[KDA, KDA, MLA, KDA],
        mlp_layer_types=["dense", "sparse", "sparse", "sparse"],
        q_lora_rank=None,
        num_local_experts=4,
        n_shared_experts=1,
        n_group=1,
        topk_group=1,
        linear_num_heads=2,
        linear_head_dim=16,
        linear_conv_kernel_dim=4,
    ),
    "mla_first_all_sparse_q_lora": dict(
        layer_types=[MLA, KDA, KDA, MLA],
        mlp_layer_types=["sparse"] * 4,
        q_lora_rank=16,
        num_local_experts=6,
        n_shared_experts=2,
        n_group=2,
        topk_group=1,
        linear_num_heads=4,
        linear_head_dim=8,
        linear_conv_kernel_dim=3,
    ),
}
# Past three KDA chunks of 64 and twelve KV blocks of 16; a one-token prompt too.
PROMPTS = random_prompts([1, 7, 150, 200], seed=21)
# Two questions about one document: they part at token 100, inside the seventh block.
DOCUMENT = PROMPTS[3][:100]
QUESTIONS = random_prompts([40, 25], seed=22, prefix=DOCUMENT)


def save_tiny_kimi(name: str, path, tokenizer_dir):
    config = transformers.KimiLinearConfig(**{**COMMON, **KIMI_MODELS[name]})
    return save_random_moe(config, path, tokenizer_dir)


@pytest.fixture(scope="module", params=list(KIMI_MODELS))
def kimi(request, tmp_path_factory, hf_tokenizer_dir):
    return save_tiny_kimi(request.param, tmp_path_factory.mktemp(request.param), hf_tokenizer_dir)


@pytest.fixture(scope="module")
def reference(kimi):
    return load_reference(kimi)


@pytest.fixture(scope="module")
def expected(reference):
    """transformers' greedy tokens and logprobs for each of PROMPTS."""
    return [reference_greedy(reference, prompt, MAX_NEW) for prompt in PROMPTS]


@pytest.fixture(scope="module")
def expected_questions(reference):
    """transformers' greedy tokens and logprobs for each of QUESTIONS, whole."""
    return [reference_greedy(reference, prompt, MAX_NEW) for prompt in QUESTIONS]


def engine(path, **engine_args) -> LLM:
    defaults = {"kv_cache_memory": 4 << 20, "block_size": 16, "max_num_seqs": 4}
    return LLM(str(path), **{**defaults, **engine_args})


def assert_matches(expected, outputs) -> None:
    """Tokens equal; logprobs of our top alternatives as transformers gives them."""
    for (tokens, logprobs), out in zip(expected, outputs, strict=True):
        assert out.token_ids == tokens
        for ours, theirs in zip(out.logprobs, logprobs, strict=True):
            ids = list(ours.top)
            values = torch.tensor([ours.top[i] for i in ids])
            torch.testing.assert_close(values, theirs[ids], atol=1e-4, rtol=0)
            torch.testing.assert_close(values, theirs.topk(TOP).values, atol=1e-4, rtol=0)


def assert_every_slot_free(llm: LLM) -> None:
    pool = llm.engine.state_pool
    assert pool.num_free == pool.num_slots


def assert_no_checkpoint_leaks(llm: LLM) -> None:
    """Every checkpoint slot is free or holds a kept checkpoint, none reserved."""
    checkpoints = llm.engine.state_pool.checkpoints
    assert checkpoints.num_free + len(checkpoints) == checkpoints.num_slots


def kda_inputs(tokens: int, heads: int = 3, k_dim: int = 16, v_dim: int = 24, decay: float = 3):
    torch.manual_seed(tokens)
    q, k = torch.randn(tokens, heads, k_dim), torch.randn(tokens, heads, k_dim)
    v = torch.randn(tokens, heads, v_dim)
    g = -torch.rand(tokens, heads, k_dim) * decay
    return q, k, v, g, torch.rand(tokens, heads)


@pytest.mark.parametrize("decay", [3.0, 60.0])  # 60: exp(-g) over a chunk overflows float32
@pytest.mark.parametrize("chunks_at_once", ["all", "one"])
def test_chunked_kda_equals_transformers(decay, chunks_at_once, monkeypatch):
    if chunks_at_once == "one":
        monkeypatch.setattr(kda_ops, "DECAY_ELEMENTS", 1)
    q, k, v, g, beta = kda_inputs(150, decay=decay)
    state = torch.randn(3, 16, 24)
    theirs, their_state = hf_kimi.chunk_kimi_delta_attention(
        *(x[None] for x in (q, k, v, g, beta)),
        initial_state=state[None],
        output_final_state=True,
        use_qk_l2norm_in_kernel=True,
    )
    ours, our_state = chunk_kda(q, k, v, g, beta, state)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, theirs[0], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(our_state, their_state[0], atol=2e-5, rtol=1e-5)


def test_a_decode_step_equals_transformers_recurrence():
    q, k, v, g, beta = kda_inputs(5)
    states = torch.randn(5, 3, 16, 24)  # five sequences, one token each
    theirs, their_states = hf_kimi.recurrent_kimi_delta_attention(
        *(x[:, None] for x in (q, k, v, g, beta)),
        initial_state=states,
        output_final_state=True,
        use_qk_l2norm_in_kernel=True,
    )
    ours = recurrent_kda_step(q, k, v, g, beta, states)
    torch.testing.assert_close(ours, theirs[:, 0])
    torch.testing.assert_close(states, their_states)


def test_the_short_convolution_in_pieces_equals_one_pass():
    torch.manual_seed(0)
    conv = ShortConvolution(6, 4)
    torch.nn.init.normal_(conv.weight)
    x = torch.randn(20, 6)
    theirs = hf_kimi.causal_conv1d_fn(x.T[None], conv.weight[:, 0], activation="silu")[0].T
    first, state = conv.forward_chunk(x[:2], None)  # shorter than the state
    second, state = conv.forward_chunk(x[2:13], state)
    states = state[None].clone()
    steps = [conv.forward_step(x[t : t + 1], states) for t in range(13, 20)]
    torch.testing.assert_close(torch.cat([first, second, *steps]), theirs)


def state_metadata(
    chunk: int, context: int, slot: int, checkpoint: StateCheckpoint | None = None
) -> AttentionMetadata:
    """One sequence's chunk of `chunk` tokens ending at `context`, in state slot `slot`,
    with what a recurrent layer reads of it (one token goes the decode path)."""
    unused = torch.empty(0)
    return AttentionMetadata(
        slot_mapping=unused,
        block_tables=unused,
        context_lens=unused,
        query_start_loc=unused,
        rope_seq_lens=unused,
        num_decodes=int(chunk == 1),
        query_start_loc_cpu=[0, chunk],
        context_lens_cpu=[context],
        block_tables_cpu=unused,
        block_size=16,
        state_slots=torch.tensor([slot]),
        state_slots_cpu=[slot],
        state_checkpoints_cpu=[checkpoint],
    )


def test_a_checkpoint_holds_the_state_where_it_is_saved():
    """Saved inside a prefill chunk, or by a one-token chunk (the decode path), a
    checkpoint is the state of a sequence that stopped there."""
    config = transformers.KimiLinearConfig(**{**COMMON, **KIMI_MODELS["kda_first_dense"]})
    torch.manual_seed(0)
    layer = KimiDeltaAttention(config)
    for parameter in layer.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    specs = layer.state_specs(torch.float32)
    layer.bind_state({name: torch.zeros(4, *spec.shape) for name, spec in specs.items()})
    x = torch.randn(16, config.hidden_size)
    layer(x, None, state_metadata(16, 16, 0, StateCheckpoint(10, 2)))
    layer(x[:10], None, state_metadata(10, 10, 1))
    assert_same_state(layer, 2, 1)
    layer(x[10:15], None, state_metadata(5, 15, 1))
    layer(x[15:], None, state_metadata(1, 16, 1, StateCheckpoint(1, 3)))
    for slot in (1, 3):
        assert_same_state(layer, slot, 0)


def assert_same_state(layer: KimiDeltaAttention, slot: int, other: int) -> None:
    torch.testing.assert_close(layer.conv_state[slot], layer.conv_state[other])
    torch.testing.assert_close(layer.recurrent_state[slot], layer.recurrent_state[other])


def test_greedy_and_logprobs_equal_transformers(kimi, expected):
    llm = engine(kimi)
    assert_matches(expected, llm.generate(PROMPTS, greedy_params()))
    assert_every_slot_free(llm)


def test_chunked_prefill_equals_one_shot(kimi, expected):
    # 24 tokens a step: chunks end inside KDA chunks and KV blocks alike.
    llm = engine(kimi, max_num_batched_tokens=24)
    assert_matches(expected, llm.generate(PROMPTS, greedy_params()))


def test_a_batch_equals_each_sequence_alone(kimi):
    batched = engine(kimi).generate(PROMPTS, greedy_params())
    alone = engine(kimi, max_num_seqs=1)
    for prompt, together in zip(PROMPTS, batched, strict=True):
        out = alone.generate([prompt], greedy_params())[0]
        assert out.token_ids == together.token_ids
        mine = torch.tensor([t.logprob for t in out.logprobs])
        torch.testing.assert_close(mine, torch.tensor([t.logprob for t in together.logprobs]))


def test_preemption_recomputes_the_state(kimi, expected):
    llm = engine(kimi)
    block_bytes = llm.engine.runner.kv_pool.bytes_per_block
    # 26 blocks of 16: the prompts take 25, their answers would need 28.
    small = engine(kimi, kv_cache_memory=llm.engine.state_pool.nbytes + 26 * block_bytes)
    outputs = small.generate(PROMPTS, greedy_params())
    assert small.engine.scheduler.num_preemptions > 0
    assert_matches(expected, outputs)
    assert_every_slot_free(small)
    assert_no_checkpoint_leaks(small)


def test_an_aborted_request_gives_its_slot_back(kimi):
    llm = engine(kimi, max_num_batched_tokens=32)
    for i, prompt in enumerate(PROMPTS):
        llm.engine.add_request(str(i), prompt, SamplingParams(max_tokens=50, ignore_eos=True))
    for _ in range(3):
        llm.engine.step()
    assert llm.engine.state_pool.num_free < llm.engine.state_pool.num_slots
    for i in range(len(PROMPTS)):
        llm.engine.abort(str(i))
    assert_every_slot_free(llm)
    assert_no_checkpoint_leaks(llm)


def test_a_chunk_checkpoints_the_last_block_it_completes():
    assert checkpoint_block(0, 48, 16) == 2  # the state after 48 tokens
    assert checkpoint_block(96, 44, 16) == 7  # the last full block of a 140-token prompt
    assert checkpoint_block(40, 7, 16) is None  # completes none
    assert checkpoint_block(140, 1, 16) is None  # a decode inside a block
    assert checkpoint_block(143, 1, 16) == 8  # a decode completing one


def test_checkpoints_are_bounded_per_sequence_and_in_all_but_pinned():
    checkpoints = StateCheckpoints(range(4, 7))
    first, second = (Sequence(str(i), [1], SamplingParams(), None) for i in range(2))
    for key in (b"a", b"b", b"c"):  # the third replaces the sequence's first
        checkpoints.commit(checkpoints.reserve(first), key, first)
    assert b"a" not in checkpoints and first.state_checkpoints == [b"b", b"c"]
    assert checkpoints.pin(b"b") and not checkpoints.pin(b"a")
    checkpoints.commit(checkpoints.reserve(second), b"d", second)  # the free slot
    checkpoints.commit(checkpoints.reserve(second), b"e", second)  # c goes, b is pinned
    assert (b"b" in checkpoints, b"c" in checkpoints, checkpoints.num_free) == (True, False, 0)
    checkpoints.slot_of(b"d")  # used: e is now the least recently
    checkpoints.unpin(b"b")  # unpinned, b is the most recently used
    third = Sequence("2", [1], SamplingParams(), None)
    checkpoints.commit(checkpoints.reserve(third), b"f", third)
    assert [key in checkpoints for key in (b"b", b"d", b"e", b"f")] == [True, True, False, True]


def test_a_sequence_keeps_one_checkpoint_past_its_prompt_in_one_slot():
    checkpoints = StateCheckpoints(range(4, 8))
    seq = Sequence("0", [1], SamplingParams(), None)
    for key in (b"a", b"b"):
        checkpoints.commit(checkpoints.reserve(seq), key, seq)
    slot = checkpoints.reserve(seq, answer=True)
    checkpoints.commit(slot, b"x", seq, answer=True)
    assert checkpoints.reserve(seq, answer=True) == slot  # x is given up, its slot reused
    checkpoints.commit(slot, b"y", seq, answer=True)
    assert (seq.state_checkpoints, seq.answer_checkpoints) == ([b"a", b"b"], [b"y"])
    assert b"x" not in checkpoints and checkpoints.num_free == 1


def test_a_shared_prefix_resumes_from_the_state_at_its_last_block(kimi, expected):
    # One chunk: the first prompt's checkpoint is at the end of its last full block, 112.
    llm = engine(kimi)
    llm.generate([PROMPTS[3][:120]], greedy_params())
    out = llm.generate([PROMPTS[3]], greedy_params())[0]
    assert out.num_cached_tokens == 112
    assert_matches(expected[3:], [out])


def test_a_second_question_resumes_where_a_chunk_ended(kimi, expected_questions):
    # Chunks of 48 save states at 48, 96 and 128 (the last full block); the sequence
    # keeps its last two, and its answer's at 144. The second question parts from the
    # first at 100: it resumes at 96.
    llm = engine(kimi, max_num_batched_tokens=48)
    first = llm.generate([QUESTIONS[0]], greedy_params())[0]
    assert len(llm.engine.state_pool.checkpoints) == PER_SEQUENCE + PER_ANSWER
    second = llm.generate([QUESTIONS[1]], greedy_params())[0]
    assert (first.num_cached_tokens, second.num_cached_tokens) == (0, 96)
    assert_matches(expected_questions, [first, second])
    assert_no_checkpoint_leaks(llm)


def test_requests_sharing_a_prefix_in_one_batch(kimi, expected_questions):
    # The same question twice too: both save the same checkpoints in the same steps.
    llm = engine(kimi, max_num_batched_tokens=32)
    outputs = llm.generate([*QUESTIONS, QUESTIONS[0]], greedy_params())
    assert_matches([*expected_questions, expected_questions[0]], outputs)
    assert_every_slot_free(llm)
    assert_no_checkpoint_leaks(llm)


@pytest.mark.parametrize("slots", [0, 1])
def test_few_checkpoint_slots_change_hits_not_outputs(kimi, expected, slots):
    llm = engine(kimi, max_num_batched_tokens=32, max_state_checkpoints=slots)
    outputs = llm.generate(PROMPTS, greedy_params())
    again = llm.generate([PROMPTS[3]], greedy_params())[0]
    if not slots:  # no state to resume from: no hit, though the blocks are there
        assert again.num_cached_tokens == 0
    assert_matches([*expected, expected[3]], [*outputs, again])
    assert_no_checkpoint_leaks(llm)


def test_a_named_context_resumes_from_its_pinned_state(kimi, expected_questions):
    llm = engine(kimi, max_num_batched_tokens=48)
    assert llm.cache_context("book", DOCUMENT).num_pinned_tokens == 96
    checkpoints = llm.engine.state_pool.checkpoints
    assert checkpoints.num_pinned == 1
    own = [question[len(DOCUMENT) :] for question in QUESTIONS]
    outputs = llm.generate(own, greedy_params(), context="book")
    assert [out.num_cached_tokens for out in outputs] == [96, 96]
    assert_matches(expected_questions, outputs)
    llm.delete_context("book")
    assert checkpoints.num_pinned == 0
    assert_every_slot_free(llm)
    assert_no_checkpoint_leaks(llm)


def tiered_engine(kimi, **tiers) -> LLM:
    """An engine whose KV pool holds 11 blocks beside its state pool: the 150-token prompt
    with its answer takes them all, evicting every block of a question before it, and the
    checkpoints at their ends with them. Host memory holds 32 blocks, and (a quarter of
    it) a few checkpoints."""
    sizes = engine(kimi).engine
    state_bytes = sizes.state_pool.bytes_per_sequence
    block_bytes = sizes.runner.kv_pool.bytes_per_block
    return engine(
        kimi,
        kv_cache_memory=sizes.state_pool.nbytes + 11 * block_bytes,
        host_kv_cache_memory=32 * block_bytes + 16 * state_bytes,
        max_num_batched_tokens=48,
        **tiers,
    )


def evict_the_first_question(llm: LLM) -> list[RequestOutput]:
    """The first question (chunks of 48 keep checkpoints at 96 and 128, its answer's at
    144), then a longer prompt that evicts its blocks: they and those checkpoints go down."""
    first = llm.generate([QUESTIONS[0]], greedy_params())[0]
    other = llm.generate([PROMPTS[2]], greedy_params())[0]
    assert llm.engine.kv_tier_stats().checkpoints_to_host == PER_SEQUENCE + PER_ANSWER
    return [first, other]


def test_a_checkpoint_goes_down_to_host_memory_with_its_block_and_comes_back(
    kimi, expected, expected_questions
):
    llm = tiered_engine(kimi)
    first, other = evict_the_first_question(llm)
    # The second question parts from the first at 100: its hit ends at 96, where the
    # checkpoint in host memory is, every block of it restored from there too.
    second = llm.generate([QUESTIONS[1]], greedy_params())[0]
    stats = llm.engine.kv_tier_stats()
    assert second.num_cached_tokens == stats.host_hit_tokens == 96
    assert stats.checkpoints_from_host == 1
    assert_matches([*expected_questions, expected[2]], [first, second, other])
    assert_every_slot_free(llm)
    assert_no_checkpoint_leaks(llm)


def test_a_checkpoint_on_disk_comes_back_in_a_restarted_engine(kimi, expected_questions, tmp_path):
    evict_the_first_question(tiered_engine(kimi, disk_kv_cache_dir=str(tmp_path)))
    restarted = tiered_engine(kimi, disk_kv_cache_dir=str(tmp_path))
    second = restarted.generate([QUESTIONS[1]], greedy_params())[0]
    stats = restarted.engine.kv_tier_stats()
    assert second.num_cached_tokens == stats.disk_hit_tokens == 96
    assert stats.checkpoints_from_disk == 1
    assert_matches(expected_questions[1:], [second])
    # A damaged checkpoint file is not read: the question is computed from its start.
    for path in tmp_path.glob("*/states/*.safetensors"):
        path.write_bytes(b"not a state")
    damaged = tiered_engine(kimi, disk_kv_cache_dir=str(tmp_path))
    again = damaged.generate([QUESTIONS[1]], greedy_params())[0]
    assert damaged.engine.kv_tier_stats().checkpoints_from_disk == 0
    assert damaged.engine.scheduler.num_preemptions == 1
    assert_matches(expected_questions[1:], [again])
    assert_every_slot_free(damaged)
    assert_no_checkpoint_leaks(damaged)


def test_the_next_turn_resumes_after_the_answer(kimi, reference):
    # The first prompt's last full block ends at 112; its answer's, at 128.
    llm = engine(kimi)
    question = PROMPTS[3][:120]
    first = llm.generate([question], greedy_params())[0]
    turn = question + first.token_ids + PROMPTS[2][:20]
    second = llm.generate([turn], greedy_params())[0]
    assert second.num_cached_tokens == 128
    assert_matches([reference_greedy(reference, turn, MAX_NEW)], [second])
    assert_every_slot_free(llm)
    assert_no_checkpoint_leaks(llm)


def test_the_checkpoint_config_and_names_load(tmp_path, hf_tokenizer_dir):
    """Kimi-Linear's own config.json numbers its KDA and MLA layers from 1 in
    linear_attn_config and gives first_k_dense_replace; its dense MLP is `mlp`."""
    path = save_tiny_kimi("kda_first_dense", tmp_path, hf_tokenizer_dir)
    config = json.loads((path / "config.json").read_text())
    for key in ("layer_types", "mlp_layer_types", "linear_num_heads", "linear_head_dim"):
        config.pop(key)
    config.update(
        linear_attn_config={
            "kda_layers": [1, 2, 4],
            "full_attn_layers": [3],
            "num_heads": 2,
            "head_dim": 16,
            "short_conv_kernel_size": 4,
        },
        first_k_dense_replace=1,
    )
    (path / "config.json").write_text(json.dumps(config))
    tensors = load_file(path / "model.safetensors")
    dense = "model.layers.0.block_sparse_moe."
    tensors = {name.replace(dense, "model.layers.0.mlp."): t for name, t in tensors.items()}
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    reference = load_reference(path)
    llm = engine(path)
    kinds = [type(layer.self_attn) for layer in llm.engine.runner.model.model.layers]
    assert kinds == [KimiDeltaAttention, KimiDeltaAttention, LatentAttention, KimiDeltaAttention]
    tokens, _ = reference_greedy(reference, PROMPTS[2], MAX_NEW)
    assert llm.generate([PROMPTS[2]], greedy_params())[0].token_ids == tokens


def test_an_unknown_layer_type_is_one_clear_error(tmp_path, hf_tokenizer_dir):
    path = save_tiny_kimi("kda_first_dense", tmp_path, hf_tokenizer_dir)
    config = json.loads((path / "config.json").read_text())
    config["layer_types"][1] = "sliding_attention"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as exc_info:
        engine(path)
    assert_one_line(exc_info, ModelLoadError)
    assert "layer 1" in str(exc_info.value) and "'sliding_attention'" in str(exc_info.value)


def test_a_budget_without_room_beside_the_state_is_one_clear_error(kimi):
    state_bytes = 4 * engine(kimi).engine.state_pool.bytes_per_sequence
    with pytest.raises(InvalidRequestError) as exc_info:
        engine(kimi, kv_cache_memory=state_bytes + 100)
    assert_one_line(exc_info, InvalidRequestError)
    assert "recurrent state of max_num_seqs=4" in str(exc_info.value)


def test_the_plan_counts_the_state_pool_as_the_engine_does_and_kv_only_for_latent_layers(kimi):
    config = ModelConfig.from_hf(transformers.AutoConfig.from_pretrained(kimi))
    hf = config.hf_config
    kda_layers = hf.layer_types.count(KDA)
    heads, dim, taps = hf.linear_num_heads, hf.linear_head_dim, hf.linear_conv_kernel_dim
    per_layer = heads * dim * dim * 4 + 3 * heads * dim * (taps - 1) * 4  # float32
    settings = EngineConfig(max_num_seqs=4, max_state_checkpoints=3)
    plan = plan_memory(config, "float32", 1000, 1 << 30, engine=settings)
    assert plan.state == StatePlan(kda_layers * per_layer, seats=4, checkpoints=3)
    llm = engine(kimi, max_state_checkpoints=3)
    assert plan.state_bytes == llm.engine.state_pool.nbytes == 7 * kda_layers * per_layer
    latent = COMMON["kv_lora_rank"] + COMMON["qk_rope_head_dim"]
    assert plan.kv[0].bytes_per_token == (4 - kda_layers) * latent * 4
    room = (1 << 30) - plan.weight_bytes - plan.state_bytes
    assert plan.kv[0].max_tokens == room // plan.kv[0].bytes_per_token
    # By default as many checkpoints as seats, and none without prefix caching.
    assert plan_memory(config, "float32", 1000, 1 << 30).state.checkpoints == 64
    no_cache = EngineConfig(enable_prefix_caching=False)
    assert plan_memory(config, "float32", 1000, 1 << 30, engine=no_cache).state.checkpoints == 0
