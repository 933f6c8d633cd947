"""Everything that knows Dovecot: its file kinds, its on-disk headers, doveadm and instances."""
