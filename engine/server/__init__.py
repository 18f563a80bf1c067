"""The OpenAI-compatible chat server in front of one engine (``kvtier engine``)."""
