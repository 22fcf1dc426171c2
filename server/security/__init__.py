"""Transport security (tls.py) and caller identity, roles and quotas."""
