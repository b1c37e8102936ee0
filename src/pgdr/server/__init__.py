"""`pgdr serve`: health, readiness, Prometheus metrics and scheduled jobs."""
