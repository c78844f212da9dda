"""Operations: Prometheus metrics (the only importer of prometheus_client) and logging."""
