"""Runbook execution: timed steps whose timeline is the incident record."""
