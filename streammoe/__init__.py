"""streammoe: streaming anomaly detection for industrial sensor data with a mixture of VAEs."""

__version__ = "0.1.0"
