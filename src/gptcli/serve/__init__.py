"""`gpt serve`: an OpenAI-compatible HTTP server with continuous batching, and a web chat page.

protocol.py checks request bodies and shapes responses (pure), app.py is the Starlette app,
page/index.html the chat page served at `/`. The decode loop is gptcli.inference.batching.
Importing this package needs the `serve` extra (starlette, uvicorn).
"""
