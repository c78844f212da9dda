"""One service per endpoint family over one shared generation pipeline; the model registry."""
