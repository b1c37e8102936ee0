"""Failover that cannot make things worse: preflight, fence, promote, repoint, rejoin, watch."""
