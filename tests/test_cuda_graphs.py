"""Decode steps through captured graphs (tome/engine/cuda_graphs.py) give transformers'
greedy outputs. Without a GPU the capture is replaced by one that replays by running the
recorded forward again over the static buffers, with the Triton kernels interpreted: that
checks the buffers, the padding to captured sizes and that a graph's forward reads only
what is on the device (its host-side context lengths are the capture's, not the batch's).
On a GPU the same runs with real CUDA graphs."""

import pytest
import torch

from tests.conftest import KERNEL_DEVICE, make_tiny_model
from tests.reference import load_reference, reference_greedy
from tome import LLM, SamplingParams
from tome.engine.cuda_graphs import DecodeGraphs
from tome.layers.attention_backends import BACKEND_ENV
from tome.layers.attention_metadata import AttentionMetadata
from tome.layers.layer_kernels import LAYER_OPS_ENV

PROMPTS = [[5, 9, 200, 3000, 17, 42, 7, 11, 300, 12, 99, 1000, 8], [77, 88], [4, 5, 6, 7, 8]]
MAX_TOKENS = [7, 3, 5]  # sequences leave at different steps: batches of 3, 2 and 1


class CountingCapture:
    """A capture whose replay reruns the forward over the static buffers, and counts."""

    def __init__(self) -> None:
        self.replays = 0

    def __call__(self, forward, pool):
        def replay():
            self.replays += 1
            return forward()

        return replay


@pytest.fixture(scope="module")
def llama(tmp_path_factory, hf_tokenizer_dir):
    return make_tiny_model("llama", tmp_path_factory.mktemp("llama"), hf_tokenizer_dir)


@pytest.fixture
def triton_everywhere(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "triton")
    monkeypatch.setenv(LAYER_OPS_ENV, "triton")


def engine(path, **engine_args) -> LLM:
    return LLM(
        str(path),
        device=KERNEL_DEVICE,
        dtype="float32",
        kv_cache_memory=8 << 20,
        max_num_seqs=4,
        enforce_eager=True,  # graphs are captured by the test, with its capture
        **engine_args,
    )


def greedy(llm: LLM) -> list[list[int]]:
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in MAX_TOKENS]
    return [out.token_ids for out in llm.generate(PROMPTS, params)]


def expected(path) -> list[list[int]]:
    reference = load_reference(path)
    return [reference_greedy(reference, p, n)[0] for p, n in zip(PROMPTS, MAX_TOKENS, strict=True)]


def test_graph_replays_equal_transformers(llama, triton_everywhere):
    llm = engine(llama)
    capture = CountingCapture()
    llm.engine.runner.capture_decode_graphs(4, llm.engine.max_model_len, capture)
    assert llm.engine.runner.decode_graphs.sizes == [1, 2, 4]
    assert greedy(llm) == expected(llama)
    assert capture.replays == max(MAX_TOKENS) - 1  # every decode step, none of the prefills


def test_contexts_past_the_captured_length_run_eagerly(llama, triton_everywhere):
    llm = engine(llama)
    capture = CountingCapture()
    # Graphs for contexts of up to 16 tokens: the 13-token prompt outgrows them at its 4th
    # token, while the others keep replaying.
    llm.engine.runner.capture_decode_graphs(4, 16, capture)
    assert greedy(llm) == expected(llama)
    assert 0 < capture.replays < max(MAX_TOKENS) - 1


def test_host_reading_backends_are_not_captured(llama, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "torch")
    llm = engine(llama)
    capture = CountingCapture()
    llm.engine.runner.capture_decode_graphs(4, llm.engine.max_model_len, capture)
    assert llm.engine.runner.decode_graphs is None
    assert greedy(llm) == expected(llama)
    assert capture.replays == 0


def test_a_failed_capture_leaves_decode_eager(llama, triton_everywhere, caplog):
    def failing(forward, pool):
        raise RuntimeError("operation not permitted when stream is capturing")

    llm = engine(llama)
    llm.engine.runner.capture_decode_graphs(4, llm.engine.max_model_len, failing)
    assert llm.engine.runner.decode_graphs is None
    assert "CUDA graph capture failed" in caplog.text
    assert greedy(llm) == expected(llama)


class RecordingModel(torch.nn.Module):
    """Records what each forward reads; its hidden state is the input ids."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, torch.Tensor]] = []

    def forward(self, input_ids, positions, meta: AttentionMetadata) -> torch.Tensor:
        self.seen.append(
            dict(slots=meta.slot_mapping.clone(), lens=meta.context_lens.clone(), ids=input_ids)
        )
        return input_ids[:, None].float()


def decode_batch(slots: list[int]) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    n = len(slots)
    lens = [s + 1 for s in slots]
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots),
        block_tables=torch.arange(n * 2).view(n, 2),
        context_lens=torch.tensor(lens),
        query_start_loc=torch.arange(n + 1),
        rope_seq_lens=torch.tensor(lens),
        num_decodes=n,
        query_start_loc_cpu=list(range(n + 1)),
        context_lens_cpu=lens,
        block_tables_cpu=torch.arange(n * 2).view(n, 2),
        block_size=16,
    )
    return torch.arange(100, 100 + n), torch.tensor(slots), meta


def test_padding_rows_of_a_smaller_batch_write_nowhere():
    """A batch of 3 replays the graph of 4: its fourth row, which a batch of 4 just used,
    is padding again: slot -1 (not stored), a context of one token."""
    recorder = RecordingModel()
    graphs = DecodeGraphs(recorder, 16, 4, 64, torch.device("cpu"), CountingCapture())
    assert graphs.run(*decode_batch([5, 9, 20, 31])).flatten().tolist() == [100, 101, 102, 103]
    hidden = graphs.run(*decode_batch([6, 10, 21]))
    assert hidden.flatten().tolist() == [100, 101, 102]
    last = recorder.seen[-1]
    assert last["slots"].tolist() == [6, 10, 21, -1]
    assert last["lens"].tolist() == [7, 11, 22, 1]
    assert not graphs.serves(decode_batch([70])[2])  # past the 64 captured tokens


@pytest.mark.skipif(KERNEL_DEVICE != "cuda", reason="real CUDA graphs need a GPU")
def test_cuda_graphs_equal_transformers_on_the_gpu(llama):
    llm = LLM(str(llama), device="cuda", dtype="float32", kv_cache_memory=8 << 20, max_num_seqs=4)
    assert llm.engine.runner.decode_graphs is not None
    assert greedy(llm) == expected(llama)
