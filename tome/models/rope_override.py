"""A rope scaling override: run a model past the window it was trained for, as a
`rope_scaling` entry in its config.json would, e.g. {"rope_type": "yarn", "factor": 4}.

`check_rope_override` validates the dict alone (where EngineConfig is built);
`apply_rope_override` puts it into a model's transformers config before the model is built.
The stretched window (the model's window times the factor) follows from the config then,
see `context_window`."""

import math
from typing import Any

from tome.errors import InvalidRequestError
from tome.layers.rotary import rope_parameters

# Beside rope_type: the keys each rope type needs, and those it may also take.
REQUIRED_KEYS = {
    "linear": {"factor"},
    "dynamic": {"factor"},
    "yarn": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor"},
    "longrope": {"factor", "short_factor", "long_factor"},
}
OPTIONAL_KEYS = {
    "linear": set(),
    "dynamic": set(),
    "yarn": {
        "original_max_position_embeddings",
        "attention_factor",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "truncate",
    },
    "llama3": {"original_max_position_embeddings"},
    "longrope": {"original_max_position_embeddings", "attention_factor"},
}
LIST_KEYS = {"short_factor", "long_factor"}
EXAMPLE = '{"rope_type": "yarn", "factor": 4}'


def check_rope_override(override: object) -> dict[str, Any] | None:
    """The override with "type" spelled "rope_type" and numbers as floats; a one-line
    InvalidRequestError for anything a rope cannot take."""
    if override is None:
        return None
    if not isinstance(override, dict):
        raise InvalidRequestError(f"rope_scaling must be a JSON object such as {EXAMPLE}")
    rope_type = override.get("rope_type", override.get("type"))
    if rope_type not in REQUIRED_KEYS:
        raise InvalidRequestError(
            f"rope_scaling needs a rope_type among {', '.join(REQUIRED_KEYS)}; got {rope_type!r}"
        )
    if override.get("type", rope_type) != rope_type:
        raise InvalidRequestError("rope_scaling has both type and rope_type, and they differ")
    fields = {key: value for key, value in override.items() if key not in ("type", "rope_type")}
    _check_keys(rope_type, set(fields))
    return {"rope_type": rope_type, **{key: _checked(key, value) for key, value in fields.items()}}


def apply_rope_override(hf_config: Any, override: dict[str, Any] | None) -> None:
    """Set a checked override as the config's rope parameters. The model's own window
    becomes original_max_position_embeddings unless the override names one."""
    if override is None:
        return
    current = rope_parameters(hf_config)
    if current["rope_type"] != "default":
        if all(current.get(key) == value for key, value in override.items()):
            return  # the model already has exactly this scaling
        raise InvalidRequestError(
            f"the model already has {current['rope_type']} rope scaling; "
            "a different rope_scaling cannot be put on top of it"
        )
    if override["rope_type"] == "longrope":
        _check_longrope_lengths(hf_config, override)
    kept = {key: current[key] for key in ("rope_theta", "partial_rotary_factor") if key in current}
    params = {**kept, **override}
    # transformers' dynamic NTK has no original window: it switches at max_position_embeddings.
    if override["rope_type"] != "dynamic":
        params.setdefault("original_max_position_embeddings", hf_config.max_position_embeddings)
    hf_config.rope_parameters = params


def _check_keys(rope_type: str, keys: set[str]) -> None:
    missing = REQUIRED_KEYS[rope_type] - keys
    if missing:
        raise InvalidRequestError(
            f"rope_scaling of rope_type {rope_type} needs {', '.join(sorted(missing))}"
        )
    unknown = keys - REQUIRED_KEYS[rope_type] - OPTIONAL_KEYS[rope_type]
    if unknown:
        raise InvalidRequestError(
            f"rope_scaling of rope_type {rope_type} does not take {', '.join(sorted(unknown))}"
        )


def _checked(key: str, value: Any) -> Any:
    if key in LIST_KEYS:
        if not (isinstance(value, list) and value and all(map(_is_number, value))):
            raise InvalidRequestError(f"rope_scaling {key} must be a list of numbers")
        return [float(x) for x in value]
    if key == "truncate":
        if not isinstance(value, bool):
            raise InvalidRequestError("rope_scaling truncate must be true or false")
        return value
    if key == "original_max_position_embeddings":
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise InvalidRequestError(f"rope_scaling {key} must be a whole number > 0")
        return value
    if not _is_number(value):
        raise InvalidRequestError(f"rope_scaling {key} must be a number; got {value!r}")
    if key == "factor" and not value > 1:
        raise InvalidRequestError(f"rope_scaling factor must be > 1; got {value!r}")
    return float(value)


def _is_number(value: Any) -> bool:
    # JSON lets NaN and Infinity through; no rope takes them.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_longrope_lengths(hf_config: Any, override: dict[str, Any]) -> None:
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    for key in LIST_KEYS:
        if len(override[key]) != head_dim // 2:
            raise InvalidRequestError(
                f"rope_scaling {key} has {len(override[key])} numbers; this model's heads "
                f"need {head_dim // 2} (head_dim / 2)"
            )
