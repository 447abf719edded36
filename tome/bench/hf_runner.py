"""The transformers side: the same model file and prompts, run the way `generate` runs
them: a prefill forward that keeps only the last position's logits, then a greedy loop
that feeds one token per sequence with the DynamicCache."""

import time

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from tome.bench.measure import measure
from tome.bench.results import RowKey, SideResult
from tome.bench.spec import ModelSpec
from tome.bench.workloads import Workload
from tome.loader import load_hf_config
from tome.models.rope_override import apply_rope_override, check_rope_override


def run_hf(model: ModelSpec, workload: Workload) -> SideResult:
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    hf = load_hf_model(model)
    return measure("transformers", _HFBench(hf, model.torch_device), workload)


def load_hf_model(model: ModelSpec) -> PreTrainedModel:
    path = model.source.path
    kwargs = {"dtype": model.torch_dtype, "attn_implementation": "sdpa"}
    if model.rope_scaling is not None:
        kwargs["config"] = _config_with_rope_scaling(model)
    if model.dummy:
        config = kwargs.pop("config", None) or AutoConfig.from_pretrained(path)
        with model.torch_device:
            hf = AutoModelForCausalLM.from_config(config, **kwargs)
    elif model.source.kind == "gguf":
        hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **kwargs)
    else:
        hf = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return hf.to(model.torch_device).eval()


def _config_with_rope_scaling(model: ModelSpec) -> PretrainedConfig:
    """The model's config with the rope scaling our side is given, so both run one model."""
    config = load_hf_config(model.source)
    apply_rope_override(config, check_rope_override(model.rope_scaling))
    return config


class _HFBench:
    def __init__(self, model: PreTrainedModel, device: torch.device) -> None:
        self.model = model
        self.device = device

    def has_room(self, key: RowKey) -> bool:
        # transformers' cache grows as it goes: a row that cannot fit runs out of memory.
        return True

    @torch.inference_mode()
    def prefill_tps(self, prompt: list[int]) -> float:
        """Prompt tokens / time of one forward over the prompt to its first token."""
        start = time.perf_counter()
        self._prefill([prompt])
        return len(prompt) / (time.perf_counter() - start)

    @torch.inference_mode()
    def decode_tps(self, prompts: list[list[int]], max_tokens: int) -> float:
        """Tokens generated after the first (which comes from the prefill) / their time."""
        next_ids, cache = self._prefill(prompts)
        start = time.perf_counter()
        for _ in range(max_tokens - 1):
            out = self.model(input_ids=next_ids, past_key_values=cache, use_cache=True)
            next_ids, cache = self._greedy(out.logits), out.past_key_values
            # Fetched every step, as our engine does (and as generate does to check stops).
            next_ids.tolist()
        return (max_tokens - 1) * len(prompts) / (time.perf_counter() - start)

    def _prefill(self, prompts: list[list[int]]):
        # Equal lengths, so the batch needs no padding or attention mask.
        ids = torch.tensor(prompts, device=self.device)
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        next_ids = self._greedy(out.logits)
        next_ids.tolist()
        return next_ids, out.past_key_values

    @staticmethod
    def _greedy(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1].argmax(dim=-1, keepdim=True)
