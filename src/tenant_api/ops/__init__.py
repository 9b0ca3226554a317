"""What operators run and watch: request ids, rate limits, metrics, logs, shutdown, retention."""
