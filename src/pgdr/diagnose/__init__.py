"""`pgdr diagnose` and `pgdr terminate`: what is wrong with a live server, and safe remediation."""
