"""The OpenAI-compatible HTTP server: `create_app` over one AsyncEngine, `serve` to run it."""
