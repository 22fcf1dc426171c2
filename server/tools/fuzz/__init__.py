"""Fuzzing of recd's gRPC services: Hypothesis strategies built from the protos (messages.py), a real
server to aim them at (target.py), and the run that counts what came back (run.py). Used by the tests
in server/tests/fuzz/ (bounded, derandomised) and by `recd bench fuzz`."""
