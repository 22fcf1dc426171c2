"""The request path as a declared list of small named steps (validate, hydrate, candidates, ...)."""
