"""Model runtimes behind one small interface (:mod:`server.engine.base`)."""
