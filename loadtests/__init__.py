"""Locust load tests of recd and their orchestration (`make loadtest`)."""
