"""The HTTP service: read API for Grafana, /metrics for Prometheus (see :func:`create_app`)."""
