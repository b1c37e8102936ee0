"""Drills: inject real faults into throwaway sandboxes, recover with pgdr's own commands,
and measure RTO and RPO against the runbooks' targets."""
