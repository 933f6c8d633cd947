"""Transports: thin byte pipes under the sans-IO session (TCP now; RDMA and shm fit the same
contract, see base.Transport)."""
