"""Which model class implements which Hugging Face architecture."""

from torch import nn

from tome.models.config import ModelConfig
from tome.models.deepseek import DeepseekForCausalLM
from tome.models.kimi_linear import KimiLinearForCausalLM
from tome.models.llama import LlamaForCausalLM
from tome.models.mixtral import MixtralForCausalLM
from tome.models.qwen_moe import QwenMoeForCausalLM

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
    "MixtralForCausalLM": MixtralForCausalLM,
    "Qwen2MoeForCausalLM": QwenMoeForCausalLM,
    "Qwen3MoeForCausalLM": QwenMoeForCausalLM,
    "DeepseekV2ForCausalLM": DeepseekForCausalLM,
    "DeepseekV3ForCausalLM": DeepseekForCausalLM,
    "KimiLinearForCausalLM": KimiLinearForCausalLM,
}


def model_class(config: ModelConfig) -> type[nn.Module]:
    return MODEL_CLASSES[config.architecture]
