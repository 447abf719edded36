"""The reading assistant: documents, web pages and search, retrieval, conversations and
prompt assembly. It speaks to the engine only through `AsyncEngine`."""
