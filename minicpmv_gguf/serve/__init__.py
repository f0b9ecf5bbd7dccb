"""`minicpmv-gguf serve`: an OpenAI-compatible server for chat about images (FastAPI; `pip install '.[serve]'`)."""

from __future__ import annotations

from .app import Settings, create_app


def run_server(settings: Settings, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Load the model and serve until interrupted (uvicorn logs the address once it listens)."""
    import uvicorn

    app = create_app(settings)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)


__all__ = ["Settings", "create_app", "run_server"]
