"""EvalConfig: the grid `tome eval run` was asked for, validated where it is built; and the
parsing of its comma-separated flags."""

import re
from dataclasses import dataclass
from pathlib import Path

from tome.errors import InvalidRequestError
from tome.eval.items import LANGUAGES
from tome.eval.tasks import TASKS

_LENGTH_UNITS = {"": 1, "k": 2**10, "m": 2**20}


@dataclass(frozen=True)
class EvalConfig:
    tasks: tuple[str, ...] = tuple(TASKS)
    languages: tuple[str, ...] = LANGUAGES
    lengths: tuple[int, ...] = (1024, 2048, 4096)  # context lengths in tokens
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    samples: int = 1  # items per grid cell
    seed: int = 0
    out: Path = Path("tome-eval")

    def __post_init__(self) -> None:
        _check_known("task", self.tasks, tuple(TASKS))
        _check_known("language", self.languages, LANGUAGES)
        checks = [
            (bool(self.tasks) and bool(self.languages), "give at least one task and language"),
            (bool(self.lengths) and bool(self.depths), "give at least one length and depth"),
            (all(n > 0 for n in self.lengths), "context lengths must be > 0"),
            (all(0.0 <= d <= 1.0 for d in self.depths), "depths are fractions from 0 to 1"),
            (self.samples >= 1, "--samples must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidRequestError(message)

    @property
    def max_answer_tokens(self) -> int:
        return max(TASKS[task].max_answer_tokens for task in self.tasks)


def _check_known(kind: str, names: tuple[str, ...], known: tuple[str, ...]) -> None:
    for name in names:
        if name not in known:
            raise InvalidRequestError(f"unknown {kind} {name!r}; choose from {', '.join(known)}")


def parse_names(text: str) -> tuple[str, ...]:
    """'passkey, niah_single' -> ('passkey', 'niah_single')."""
    return tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def parse_lengths(text: str) -> tuple[int, ...]:
    """'1k,4k,4000' -> (1024, 4096, 4000): k and m are powers of two, as in RULER's grids."""
    lengths = []
    for part in parse_names(text.lower()):
        match = re.fullmatch(r"(\d+)([km]?)", part)
        if match is None:
            raise InvalidRequestError(
                f"cannot read {part!r} as a context length; write e.g. 4k, 128k or 3000"
            )
        lengths.append(int(match.group(1)) * _LENGTH_UNITS[match.group(2)])
    return tuple(dict.fromkeys(lengths))


def parse_depths(text: str) -> tuple[float, ...]:
    """'0,0.5,1' -> (0.0, 0.5, 1.0)."""
    try:
        return tuple(dict.fromkeys(float(part) for part in parse_names(text)))
    except ValueError as exc:
        raise InvalidRequestError(
            f"--depths must be fractions from 0 to 1, e.g. 0,0.5,1; got {text!r}"
        ) from exc


def format_length(tokens: int) -> str:
    """4096 -> '4k'; lengths that are not whole k stay as numbers."""
    for unit, size in (("m", 2**20), ("k", 2**10)):
        if tokens % size == 0:
            return f"{tokens // size}{unit}"
    return str(tokens)
