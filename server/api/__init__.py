"""The HTTP layer: the app (the one composition root), routes, middleware, errors -> HTTP, static web, shutdown."""
