"""KV tiers below the device pool: host memory and disk.

The tiers alone, on a stand-in pool whose tensors are as unlike as a quantized pool's
(int8 values, float32 scales, bfloat16): blocks come back bit for bit, bounds hold, the
least recently used go first, disk files outlive their engine, damaged ones are refused.
Then whole engines on a tiny Llama: a prefix evicted from a small device pool comes back
from host memory or disk (after a restart too) instead of being recomputed, and the
greedy outputs stay transformers'."""

import os
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from tests.conftest import make_tiny_model
from tests.reference import load_reference, reference_greedy
from tome import LLM, SamplingParams
from tome.engine.block_manager import BlockSwaps, chain_hash
from tome.engine.config import EngineConfig
from tome.engine.disk_kv_tier import DiskKVTier, kv_fingerprint
from tome.engine.host_kv_tier import HostKVTier
from tome.engine.kv_cache import kv_bytes_per_token
from tome.engine.kv_tiers import KVTiers
from tome.errors import InvalidRequestError
from tome.loader.model_source import ModelSource
from tome.models.config import ModelConfig

BS = 8
MAX_NEW = 8


class StandInPool:
    """What KVTiers needs of a KVPool: tensors leading with the block."""

    def __init__(self, num_blocks: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self._tensors = [
            torch.randint(-128, 128, (num_blocks, BS, 2, 8), generator=gen, dtype=torch.int8),
            torch.rand((num_blocks, BS, 2), generator=gen),
            torch.randn((num_blocks, BS, 2, 8), generator=gen).to(torch.bfloat16),
        ]

    def tensors(self) -> list[torch.Tensor]:
        return self._tensors

    def block(self, block_id: int) -> list[torch.Tensor]:
        return [t[block_id].clone() for t in self._tensors]

    @property
    def block_bytes(self) -> int:
        return sum(t[0].numel() * t.element_size() for t in self._tensors)


def name(i: int) -> bytes:
    return chain_hash(None, [i])


def tiers_over(pool: StandInPool, host_slots: int, disk_dir: Path | None = None) -> KVTiers:
    host = HostKVTier(pool.tensors(), host_slots)
    disk = None if disk_dir is None else DiskKVTier(disk_dir, 2**20, pool.tensors())
    return KVTiers(host, disk, BS, pool.block_bytes)


def assert_block_equals(pool: StandInPool, block_id: int, expected: list[torch.Tensor]) -> None:
    for got, want in zip(pool.block(block_id), expected, strict=True):
        assert torch.equal(got, want)


def test_a_block_comes_back_from_host_memory_bit_for_bit():
    pool = StandInPool(4)
    saved = [pool.block(0), pool.block(1)]
    tiers = tiers_over(pool, host_slots=2)
    assert tiers.apply(BlockSwaps(outs=[(0, name(0)), (1, name(1))]), pool) == set()
    for t in pool.tensors():
        t.zero_()  # the device blocks are overwritten
    lost = tiers.apply(BlockSwaps(ins=[(name(1), 2), (name(0), 3)]), pool)
    assert lost == set()
    assert_block_equals(pool, 2, saved[1])
    assert_block_equals(pool, 3, saved[0])
    stats = tiers.stats
    assert (stats.bytes_to_host, stats.bytes_from_host) == (2 * pool.block_bytes,) * 2
    assert stats.host_hit_tokens == 2 * BS
    assert name(0) in tiers  # kept: evicting it again costs no copy
    tiers.apply(BlockSwaps(outs=[(3, name(0))]), pool)
    assert stats.bytes_to_host == 2 * pool.block_bytes


def test_host_memory_keeps_its_bound_and_drops_the_least_recently_used():
    pool = StandInPool(4)
    tiers = tiers_over(pool, host_slots=2)
    for i in range(3):
        tiers.apply(BlockSwaps(outs=[(i, name(i))]), pool)
    assert len(tiers.host) == 2
    assert [name(i) in tiers for i in range(3)] == [False, True, True]
    tiers.apply(BlockSwaps(outs=[(1, name(1))]), pool)  # seen again: most recent now
    tiers.apply(BlockSwaps(outs=[(3, name(3))]), pool)
    assert [name(i) in tiers for i in range(4)] == [False, True, False, True]


def test_blocks_about_to_be_restored_are_not_pushed_out_to_make_room():
    pool = StandInPool(4)
    tiers = tiers_over(pool, host_slots=1)
    expected = pool.block(0)
    tiers.apply(BlockSwaps(outs=[(0, name(0))]), pool)
    lost = tiers.apply(BlockSwaps(outs=[(1, name(1))], ins=[(name(0), 2)]), pool)
    assert lost == set()
    assert_block_equals(pool, 2, expected)
    assert name(1) not in tiers  # no room beside the block being restored: dropped


def test_with_a_disk_every_saved_block_is_on_disk_and_host_memory_keeps_the_recent(tmp_path):
    pool = StandInPool(4)
    expected = pool.block(0)
    tiers = tiers_over(pool, host_slots=2, disk_dir=tmp_path)
    for i in range(4):
        tiers.apply(BlockSwaps(outs=[(i, name(i))]), pool)
    assert len(tiers.host) == 2
    assert len(tiers.disk) == 4
    assert len(list(tmp_path.glob("*.safetensors"))) == 4
    assert tiers.apply(BlockSwaps(ins=[(name(0), 3)]), pool) == set()
    assert_block_equals(pool, 3, expected)
    stats = tiers.stats
    assert (stats.host_hit_tokens, stats.disk_hit_tokens) == (0, BS)
    assert (stats.bytes_to_disk, stats.bytes_from_disk) == (4 * pool.block_bytes, pool.block_bytes)


def test_disk_blocks_outlive_their_engine_within_the_bound_oldest_first(tmp_path):
    pool = StandInPool(3)
    disk = DiskKVTier(tmp_path, 2**20, pool.tensors())
    for i in range(3):
        assert disk.save(name(i), pool.block(i), keep=())
        # Recency is the file's modification time; set it apart from the clock's grain.
        os.utime(tmp_path / f"{name(i).hex()}.safetensors", ns=(10**18 + i, 10**18 + i))
    file_bytes = disk.used_bytes // 3
    reopened = DiskKVTier(tmp_path, 2 * file_bytes, pool.tensors())
    assert [name(i) in reopened for i in range(3)] == [False, True, True]
    assert reopened.used_bytes == 2 * file_bytes
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    rows = reopened.load(name(2))
    assert all(torch.equal(a, b) for a, b in zip(rows, pool.block(2), strict=True))
    reopened.save(name(0), pool.block(0), keep=())  # full: the least recent file goes
    assert [name(i) in reopened for i in range(3)] == [True, False, True]


def test_a_damaged_or_foreign_disk_file_is_forgotten_not_loaded(tmp_path):
    pool = StandInPool(2)
    disk = DiskKVTier(tmp_path, 2**20, pool.tensors())
    disk.save(name(0), pool.block(0), keep=())
    disk.save(name(1), pool.block(1), keep=())
    damaged = tmp_path / f"{name(0).hex()}.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:40])
    other_layout = StandInPool(2).tensors()[:2]  # a pool without the bfloat16 tensor
    foreign = DiskKVTier(tmp_path / "other", 2**20, other_layout)
    foreign.save(name(1), [t[1] for t in other_layout], keep=())
    os.replace(tmp_path / "other" / f"{name(1).hex()}.safetensors", disk._path(name(1)))
    assert disk.load(name(0)) is None
    assert disk.load(name(1)) is None
    assert len(disk) == 0
    assert not damaged.exists()


def test_the_fingerprint_names_model_files_numerics_and_layout(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"first")
    source = ModelSource("hf_dir", tmp_path)
    layout = StandInPool(1).tensors()
    first = kv_fingerprint(source, "torch.float32|auto", layout)
    assert kv_fingerprint(source, "torch.float32|auto", layout) == first
    assert kv_fingerprint(source, "torch.bfloat16|auto", layout) != first
    assert kv_fingerprint(source, "torch.float32|auto", layout[:2]) != first
    weights.write_bytes(b"other")
    os.utime(weights, ns=(1, 1))
    assert kv_fingerprint(source, "torch.float32|auto", layout) != first


@pytest.mark.parametrize(
    "fields",
    [
        {"disk_kv_cache_dir": "/tmp/kv"},  # the disk is reached through host memory
        {"host_kv_cache_memory": 2**20, "enable_prefix_caching": False},
        {"host_kv_cache_memory": -1},
        {"host_kv_cache_memory": 1.5},
        {"host_kv_cache_memory": 2**20, "disk_kv_cache_dir": "  "},
        {"host_kv_cache_memory": 2**20, "disk_kv_cache_memory": 0},
    ],
)
def test_bad_tier_settings_are_refused(fields):
    with pytest.raises(InvalidRequestError):
        EngineConfig(**fields)


# Whole engines. A pool of 8 blocks of 8 tokens; prompt A (40 tokens, 5 blocks once its
# answer is in) is pushed out entirely by B (56 tokens, all 8 blocks by its end).


def random_tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 49152) for _ in range(n)]


A = random_tokens(40, seed=1)
B = random_tokens(56, seed=2)
CACHEABLE = 32  # A's full blocks before its last token


def greedy() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)


def block_bytes(model: Path) -> int:
    config = ModelConfig.from_hf(AutoConfig.from_pretrained(model))
    return kv_bytes_per_token(config, torch.float32) * BS


def engine(model: Path, host_blocks: int = 0, disk_dir: Path | None = None) -> LLM:
    size = block_bytes(model)
    tiers = {"host_kv_cache_memory": host_blocks * size}
    if disk_dir is not None:
        tiers |= {"disk_kv_cache_dir": str(disk_dir), "disk_kv_cache_memory": 2**20}
    return LLM(str(model), block_size=BS, kv_cache_memory=8 * size, **tiers)


def count_tokens(llm: LLM, monkeypatch) -> list[int]:
    """Tokens the model computes in each step from now on."""
    counted: list[int] = []
    execute = llm.engine.runner.execute

    def counting(batch):
        counted.append(sum(batch.num_new_tokens))
        return execute(batch)

    monkeypatch.setattr(llm.engine.runner, "execute", counting)
    return counted


@pytest.fixture(scope="module")
def expected(tiny_llama) -> list[int]:
    tokens, _ = reference_greedy(load_reference(tiny_llama), A, MAX_NEW)
    return tokens


def test_an_evicted_prefix_comes_back_from_host_memory_not_recomputed(
    tiny_llama, expected, monkeypatch
):
    llm = engine(tiny_llama, host_blocks=16)
    assert llm.generate(A, greedy())[0].token_ids == expected
    llm.generate(B, greedy())
    counted = count_tokens(llm, monkeypatch)
    again = llm.generate(A, greedy())[0]
    stats = llm.engine.kv_tier_stats()
    assert again.token_ids == expected
    assert again.num_cached_tokens == CACHEABLE
    assert counted == [len(A) - CACHEABLE] + [1] * (MAX_NEW - 1)
    assert (stats.device_hit_tokens, stats.host_hit_tokens) == (0, CACHEABLE)
    assert stats.bytes_from_host == CACHEABLE // BS * block_bytes(tiny_llama)
    # Without tiers the same requests recompute A, to the same tokens.
    plain = engine(tiny_llama)
    plain.generate(A, greedy())
    plain.generate(B, greedy())
    recomputed = plain.generate(A, greedy())[0]
    assert recomputed.num_cached_tokens == 0
    assert recomputed.token_ids == expected
    assert plain.engine.kv_tier_stats().host_hit_tokens == 0


def test_a_prefix_on_disk_comes_back_in_a_restarted_engine_and_never_for_another_model(
    tiny_llama, expected, tmp_path, hf_tokenizer_dir, monkeypatch
):
    disk = tmp_path / "kv"
    llm = engine(tiny_llama, host_blocks=2, disk_dir=disk)
    llm.generate(A, greedy())
    llm.generate(B, greedy())
    again = llm.generate(A, greedy())[0]
    stats = llm.engine.kv_tier_stats()
    assert again.token_ids == expected
    assert stats.host_hit_tokens > 0 and stats.disk_hit_tokens > 0  # 2 host blocks only
    assert stats.host_hit_tokens + stats.disk_hit_tokens == CACHEABLE

    restarted = engine(tiny_llama, host_blocks=2, disk_dir=disk)
    counted = count_tokens(restarted, monkeypatch)
    out = restarted.generate(A, greedy())[0]
    assert out.token_ids == expected
    assert out.num_cached_tokens == CACHEABLE
    assert counted[0] == len(A) - CACHEABLE
    assert restarted.engine.kv_tier_stats().disk_hit_tokens == CACHEABLE

    # Another model in a folder of the same name: only the fingerprint tells them apart.
    other_dir = tmp_path / "elsewhere" / tiny_llama.name
    other_model = make_tiny_model("llama", other_dir, hf_tokenizer_dir, rms_norm_eps=0.1)
    other = engine(other_model, host_blocks=2, disk_dir=disk)
    assert other.generate(A, greedy())[0].num_cached_tokens == 0
    assert other.engine.kv_tier_stats().disk_hit_tokens == 0
    assert len(list(disk.iterdir())) == 2  # one folder per model


def test_a_damaged_disk_block_is_recomputed_not_read(tiny_llama, expected, tmp_path, monkeypatch):
    disk = tmp_path / "kv"
    llm = engine(tiny_llama, host_blocks=2, disk_dir=disk)
    llm.generate(A, greedy())
    llm.generate(B, greedy())
    restarted = engine(tiny_llama, host_blocks=2, disk_dir=disk)
    for path in disk.glob("*/*.safetensors"):
        path.write_bytes(b"not a block")
    counted = count_tokens(restarted, monkeypatch)
    assert restarted.generate(A, greedy())[0].token_ids == expected
    assert counted[0] == len(A)
    assert restarted.engine.kv_tier_stats().disk_hit_tokens == 0


def test_host_memory_too_small_for_a_block_is_refused(tiny_llama):
    with pytest.raises(InvalidRequestError, match="host_kv_cache_memory"):
        LLM(str(tiny_llama), host_kv_cache_memory=100)
