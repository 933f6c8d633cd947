"""Who owns which user, decided by etcd (DESIGN §10): leases, fencing tokens, failover and
switchover. Without `[coordination]` in the config none of this runs."""
