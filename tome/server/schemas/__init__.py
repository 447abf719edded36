"""Pydantic models of the OpenAI-compatible API: what requests may hold, what answers say."""
