"""Thin FastAPI handlers: they translate service results and errors to HTTP."""
