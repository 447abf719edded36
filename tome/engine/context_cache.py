"""ContextCache: named prefixes (a book, a contract) pinned in the KV pool.

A cached context is an ordinary prefill whose full blocks stay referenced after it ends,
so the prefix cache can never evict them: every request whose tokens start with the
context finds those blocks and pays only for its own tokens. Pinned blocks count against
the pool until the context is deleted or its time to live runs out. For a hybrid model
the recurrent state at the end of the pinned blocks is pinned too (state_checkpoints.py):
a request continuing the context resumes from it."""

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from tome.engine.block_manager import BlockManager
from tome.engine.sequence import Sequence
from tome.errors import ContextCacheNotFoundError, InvalidRequestError

MAX_NAME_LENGTH = 256
REMEMBERED_EXPIRED_NAMES = 1024  # so a late request hears "expired", not "unknown"


@dataclass(frozen=True)
class ContextInfo:
    """What callers see of a cached context."""

    name: str
    num_tokens: int  # the context's prompt tokens
    num_pinned_tokens: int  # of those, held in full KV blocks (a partial last block is not)
    created_at: float  # unix seconds
    expires_at: float


@dataclass
class _Entry:
    seq: Sequence  # owns the pinned block references
    created_at: float
    expires_at: float
    pinned_state: bytes | None = None  # the block hash whose state checkpoint it pins

    def info(self, block_size: int) -> ContextInfo:
        return ContextInfo(
            name=self.seq.context_name or "",
            num_tokens=len(self.seq.prompt_token_ids),
            num_pinned_tokens=len(self.seq.block_table) * block_size,
            created_at=self.created_at,
            expires_at=self.expires_at,
        )


def check_context_request(name: object, ttl_seconds: object) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise InvalidRequestError(
            f"a context name is a non-empty string of at most {MAX_NAME_LENGTH} characters"
        )
    if not isinstance(ttl_seconds, int | float) or not ttl_seconds > 0:
        raise InvalidRequestError("ttl_seconds must be a number > 0")


class ContextCache:
    def __init__(self, block_manager: BlockManager, clock: Callable[[], float] = time.time):
        self.block_manager = block_manager
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self._expired: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    @property
    def num_pinned_blocks(self) -> int:
        return sum(len(e.seq.block_table) for e in self._entries.values())

    def pin(self, seq: Sequence, ttl_seconds: float) -> ContextInfo:
        """Keep a finished prefill's full blocks; its partial last block is released."""
        full_blocks = len(seq.prompt_token_ids) // self.block_manager.block_size
        self.block_manager.truncate(seq, full_blocks)
        now = self.clock()
        entry = _Entry(seq, created_at=now, expires_at=now + ttl_seconds)
        entry.pinned_state = self._pin_state(seq, full_blocks)
        self._entries[seq.context_name] = entry
        self._expired.pop(seq.context_name, None)
        return entry.info(self.block_manager.block_size)

    def _pin_state(self, seq: Sequence, full_blocks: int) -> bytes | None:
        """Pin a hybrid model's checkpoint at the end of the context's blocks (saved by its
        prefill's last chunk unless every checkpoint slot was pinned: then requests
        continuing it recompute it all)."""
        checkpoints = self.block_manager.state_checkpoints
        if checkpoints is None or not full_blocks:
            return None
        last = self.block_manager.block_hash(seq, full_blocks - 1)
        return last if checkpoints.pin(last) else None

    def get(self, name: str) -> ContextInfo:
        return self._entry(name).info(self.block_manager.block_size)

    def token_ids(self, name: str) -> list[int]:
        return self._entry(name).seq.prompt_token_ids

    def all(self) -> list[ContextInfo]:
        self.expire()
        return [e.info(self.block_manager.block_size) for e in self._entries.values()]

    def refresh(self, name: str, ttl_seconds: float) -> ContextInfo:
        check_context_request(name, ttl_seconds)
        entry = self._entry(name)
        entry.expires_at = self.clock() + ttl_seconds
        return entry.info(self.block_manager.block_size)

    def delete(self, name: str) -> None:
        self._entry(name)
        self._release(name)

    def expire(self) -> None:
        now = self.clock()
        for name in [n for n, e in self._entries.items() if e.expires_at <= now]:
            self._release(name)
            self._expired[name] = None
            if len(self._expired) > REMEMBERED_EXPIRED_NAMES:
                self._expired.popitem(last=False)

    def shared_blocks(self, seq: Sequence) -> int:
        """How many pinned blocks a sequence starting with some context would share."""
        best = 0
        for entry in self._entries.values():
            pinned = len(entry.seq.block_table)
            length = pinned * self.block_manager.block_size
            same_keys = entry.seq.kv_namespace == seq.kv_namespace
            tokens = seq.prompt_token_ids[:length]
            shares = same_keys and tokens == entry.seq.prompt_token_ids[:length]
            # A hybrid model's hit needs the state at the blocks' end as well.
            hybrid = self.block_manager.state_checkpoints is not None
            if pinned > best and shares and (entry.pinned_state is not None or not hybrid):
                best = pinned
        return best

    def _entry(self, name: str) -> _Entry:
        self.expire()
        entry = self._entries.get(name)
        if entry is not None:
            return entry
        if name in self._expired:
            raise ContextCacheNotFoundError(
                f"the cached context {name!r} has expired; cache it again"
            )
        raise ContextCacheNotFoundError(f"no cached context is named {name!r}")

    def _release(self, name: str) -> None:
        entry = self._entries.pop(name)
        self.block_manager.free(entry.seq)
        if entry.pinned_state is not None:
            self.block_manager.state_checkpoints.unpin(entry.pinned_state)
