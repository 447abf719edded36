"""Tome reads whole books: a long-context LLM engine, server and reading assistant."""

from tome.engine.async_engine import AsyncEngine
from tome.engine.config import EngineConfig
from tome.engine.outputs import RequestOutput, TokenLogprob
from tome.engine.sampling_params import SamplingParams
from tome.llm import LLM

__all__ = ["LLM", "AsyncEngine", "EngineConfig", "RequestOutput", "SamplingParams", "TokenLogprob"]
