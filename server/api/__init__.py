"""The HTTP surface: OpenAI-compatible routes, request/response schemas, SSE and error mapping."""
