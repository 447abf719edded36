"""Kimi Delta Attention on the Triton path, on the kernels' device (tests/conftest.py's
KERNEL_DEVICE: Triton's interpreter on the CPU, compiled on a GPU): the recurrent kernel
(tome/kernels/kda_recurrent.py) against kda_ops, which test_kimi_linear.py holds equal to
transformers, over a batch of decodes and prefill chunks that start sequences or carry
their states, with checkpoints; the layer on the Triton path against the torch path, also
with the prefill chunks through flash-linear-attention's varlen call (a stand-in of fla's
function on the CPU, where fla's kernels do not run in the interpreter; fla's own on a GPU
with fla-core); and the engine on it against transformers."""

import pytest
import torch
import transformers

from tests.conftest import KERNEL_DEVICE
from tests.reference import load_reference, reference_greedy
from tests.test_engine_equality import MAX_NEW, greedy_params
from tests.test_kimi_linear import COMMON, KIMI_MODELS, PROMPTS, assert_matches, save_tiny_kimi
from tome import LLM
from tome.kernels.kda_recurrent import recurrent_kda
from tome.layers import kda_fla, kda_recurrence
from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.kda_ops import chunk_kda
from tome.layers.kimi_delta_attention import KimiDeltaAttention
from tome.layers.layer_kernels import LAYER_OPS_ENV
from tome.layers.layer_state import StateCheckpoint

# (tokens in this step, context after it, state slot, checkpoint): decodes first, one a
# one-token prompt and one saving a checkpoint; then prefill chunks, one starting its
# sequence with a checkpoint inside it, one carried on with a checkpoint at its end.
BATCH = [
    (1, 1, 3, None),
    (1, 9, 0, StateCheckpoint(1, 8)),
    (5, 5, 5, StateCheckpoint(2, 9)),
    (40, 100, 7, StateCheckpoint(40, 6)),
]
SLOTS = 10
HEADS, K_DIM, V_DIM = 2, 16, 40  # two blocks of value columns, the second part-filled


def batch_metadata(batch: list[tuple], device: str = KERNEL_DEVICE) -> AttentionMetadata:
    starts = [0]
    for tokens, *_ in batch:
        starts.append(starts[-1] + tokens)
    contexts = [context for _, context, _, _ in batch]
    slots = [slot for _, _, slot, _ in batch]
    unused = torch.empty(0)
    return AttentionMetadata(
        slot_mapping=unused,
        block_tables=unused,
        context_lens=torch.tensor(contexts, device=device),
        query_start_loc=torch.tensor(starts, device=device),
        rope_seq_lens=unused,
        num_decodes=sum(tokens == 1 for tokens, *_ in batch),
        query_start_loc_cpu=starts,
        context_lens_cpu=contexts,
        block_tables_cpu=unused,
        block_size=16,
        state_slots=torch.tensor(slots, device=device),
        state_slots_cpu=slots,
        state_checkpoints_cpu=[checkpoint for *_, checkpoint in batch],
    )


def kda_batch(dtype: torch.dtype, decay: float):
    """q, k, v as views of one fused row, as the layer passes them; g, beta; a pool."""
    generator = torch.Generator().manual_seed(0)
    tokens = sum(tokens for tokens, *_ in BATCH)
    fused = torch.randn(tokens, 3, HEADS, V_DIM, generator=generator).to(dtype)
    q, k, v = fused[:, 0, :, :K_DIM], fused[:, 1, :, :K_DIM], fused[:, 2]
    g = -torch.rand(tokens, HEADS, K_DIM, generator=generator) * decay
    beta = torch.rand(tokens, HEADS, generator=generator).to(dtype)
    states = torch.randn(SLOTS, HEADS, K_DIM, V_DIM, generator=generator)
    return q, k, v, g, beta, states


def expected_batch(q, k, v, g, beta, states):
    """kda_ops' outputs for BATCH and the pool it leaves: each sequence from its slot
    (zeros where it starts), its final state in its slot, its checkpoint's in that slot."""
    meta = batch_metadata(BATCH, "cpu")
    out = torch.empty(*v.shape, dtype=torch.float32)
    pool = states.clone()
    for seq, (tokens, context, slot, checkpoint) in enumerate(BATCH):
        rows = slice(meta.query_start_loc_cpu[seq], meta.query_start_loc_cpu[seq + 1])
        initial = None if context == tokens else states[slot]
        inputs = [x[rows].float() for x in (q, k, v, g, beta)]
        out[rows], pool[slot] = chunk_kda(*inputs, initial)
        if checkpoint is not None:
            _, pool[checkpoint.slot] = chunk_kda(*(x[: checkpoint.tokens] for x in inputs), initial)
    return out, pool


@pytest.mark.parametrize(
    "dtype, decay",
    # 60: decays that underflow within a few tokens.
    [(torch.float32, 3.0), (torch.bfloat16, 60.0)],
)
def test_the_recurrent_kernel_equals_kda_ops(dtype, decay):
    q, k, v, g, beta, states = kda_batch(dtype, decay)
    expected, expected_pool = expected_batch(q, k, v, g, beta, states)
    meta = batch_metadata(BATCH)
    pool = states.to(KERNEL_DEVICE)
    checkpoints = [(c.tokens, c.slot) if c else (0, 0) for *_, c in BATCH]
    out = recurrent_kda(
        *(x.to(KERNEL_DEVICE) for x in (q, k, v, g, beta)),
        pool,
        meta.state_slots,
        meta.query_start_loc,
        meta.context_lens,
        torch.tensor(checkpoints, device=KERNEL_DEVICE),
    )
    torch.testing.assert_close(out.cpu(), expected, atol=2e-5, rtol=1e-5)
    # Slots 1, 2 and 4 are no sequence's: untouched.
    torch.testing.assert_close(pool.cpu(), expected_pool, atol=2e-5, rtol=1e-5)


def random_layer() -> KimiDeltaAttention:
    config = transformers.KimiLinearConfig(
        **{**COMMON, **KIMI_MODELS["kda_first_dense"], "linear_head_dim": K_DIM}
    )
    torch.manual_seed(0)
    layer = KimiDeltaAttention(config)
    for parameter in layer.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    layer = layer.to(KERNEL_DEVICE)
    generator = torch.Generator().manual_seed(1)
    specs = layer.state_specs(torch.float32)
    states = {
        name: torch.randn(SLOTS, *spec.shape, generator=generator) for name, spec in specs.items()
    }
    layer.bind_state({name: state.to(KERNEL_DEVICE) for name, state in states.items()})
    return layer


def run_layer(layer: KimiDeltaAttention, x: torch.Tensor, ops: str, monkeypatch) -> tuple:
    """The layer's output for BATCH with TOME_LAYER_OPS=ops, and the pool it leaves; the
    pool is restored after."""
    saved = layer.conv_state.clone(), layer.recurrent_state.clone()
    monkeypatch.setenv(LAYER_OPS_ENV, ops)
    with torch.no_grad():
        out = layer(x, None, batch_metadata(BATCH))
    left = layer.conv_state.clone(), layer.recurrent_state.clone()
    layer.bind_state({"conv": saved[0], "recurrent": saved[1]})
    return out, *left


def assert_layer_paths_agree(monkeypatch, ops: str = "triton") -> None:
    layer = random_layer()
    tokens = sum(tokens for tokens, *_ in BATCH)
    x = torch.randn(tokens, layer.qkv_proj.in_features).to(KERNEL_DEVICE)
    expected = run_layer(layer, x, "torch", monkeypatch)
    # On a GPU fla's kernels multiply float32 operands in TF32 (10-bit mantissas).
    fla = kda_fla.fla_serves(x)
    tolerance = {"atol": 5e-3, "rtol": 5e-3} if fla else {"atol": 2e-5, "rtol": 1e-5}
    for ours, theirs in zip(run_layer(layer, x, ops, monkeypatch), expected, strict=True):
        torch.testing.assert_close(ours, theirs, **tolerance)


@pytest.mark.parametrize("ops", ["triton", "auto"])
def test_the_layer_equals_the_torch_path(monkeypatch, ops):
    """`auto`: on the CPU the decodes through the C++ step (where it builds), on a GPU the
    Triton path; there, with fla-core, the prefill chunks take fla's kernels."""
    assert_layer_paths_agree(monkeypatch, ops)


def test_prefill_chunks_through_flas_varlen_call(monkeypatch):
    """kda_fla's layout around fla's chunk_kda: one varlen call for the chunks, a second
    for the pieces after a checkpoint inside a chunk, states gathered and written back.
    Here fla's function is a stand-in computing what fla's does with kda_ops (which a
    manual run of fla 0.6.0's own, patched to run in the interpreter, matched to 2e-6)."""
    calls = []

    def chunk_kda_as_fla(q, k, v, g, beta, **options):
        assert options.keys() == {
            "initial_state",
            "output_final_state",
            "use_qk_l2norm_in_kernel",
            "cu_seqlens",
            "cu_seqlens_cpu",
        }
        assert options["output_final_state"] and options["use_qk_l2norm_in_kernel"]
        cu_seqlens, initial = options["cu_seqlens_cpu"], options["initial_state"]
        assert torch.equal(options["cu_seqlens"].cpu(), cu_seqlens)
        assert initial.dtype == torch.float32 and len(initial) == len(cu_seqlens) - 1
        calls.append(cu_seqlens.tolist())
        out, finals = torch.empty(*v.shape, dtype=q.dtype, device=q.device), []
        for seq, state in enumerate(initial):
            rows = slice(cu_seqlens[seq], cu_seqlens[seq + 1])
            o, final = chunk_kda(*(x[0, rows] for x in (q, k, v, g, beta)), state)
            out[0, rows] = o.to(q.dtype)
            finals.append(final)
        return out, torch.stack(finals)

    monkeypatch.setattr(kda_fla, "fla_serves", lambda x: True)
    monkeypatch.setattr(kda_fla, "fla_chunk_kda", lambda: chunk_kda_as_fla)
    assert_layer_paths_agree(monkeypatch)
    # The chunks whole, then the 5-token chunk's 3 tokens after its checkpoint at 2.
    assert calls == [[0, 2, 42], [0, 3]]


def test_the_engine_with_kdas_triton_path_equals_transformers(
    tmp_path, hf_tokenizer_dir, monkeypatch
):
    """Decodes and 48-token prefill chunks, which save checkpoints inside them, all in the
    recurrent kernel (on a GPU too: fla's TF32 products are compared at the layer). Only
    KDA takes Triton: the other layers' kernels, in the interpreter, would take minutes."""
    monkeypatch.setattr(kda_recurrence, "uses_triton", lambda x: True)
    monkeypatch.setattr(kda_fla, "fla_serves", lambda x: False)
    path = save_tiny_kimi("kda_first_dense", tmp_path, hf_tokenizer_dir)
    prompts = PROMPTS[1:3]
    expected = [reference_greedy(load_reference(path), prompt, MAX_NEW) for prompt in prompts]
    llm = LLM(
        str(path),
        device=KERNEL_DEVICE,
        dtype="float32",
        kv_cache_memory=4 << 20,
        block_size=16,
        max_num_seqs=4,
        max_num_batched_tokens=48,
    )
    assert_matches(expected, llm.generate(prompts, greedy_params()))
