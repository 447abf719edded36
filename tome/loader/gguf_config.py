"""Config fields transformers' GGUF conversion leaves at their defaults for MoE files,
set from the file's own metadata (llama.cpp's keys, under the architecture's prefix)."""

from typing import Any

from gguf import GGUFReader

# GGUF metadata key -> the transformers config attribute it sets.
MOE_FIELDS = {
    "expert_feed_forward_length": "moe_intermediate_size",
    "expert_shared_feed_forward_length": "shared_expert_intermediate_size",
}


def complete_from_metadata(config: Any, reader: GGUFReader) -> None:
    """Set, in place, the MoE sizes the file states and transformers did not read."""
    architecture = reader.get_field("general.architecture").contents()
    for key, attribute in MOE_FIELDS.items():
        field = reader.get_field(f"{architecture}.{key}")
        if field is not None:
            setattr(config, attribute, int(field.contents()))
