"""aiops: forecasts, anomaly detection and grounded explanations for Prometheus and Grafana.

Importing this package opens no connection, reads no environment and configures no logging.
"""

__version__ = "0.1.0"
