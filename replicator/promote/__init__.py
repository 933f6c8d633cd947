"""Promote: take over a dead node's users from this node's RAM copy of its roots."""
