"""Counting XLA backend compiles with jax.monitoring (public API, not a private cache)."""

import contextlib

import jax

_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_backend_compiles():
    """``with count_backend_compiles() as n: ...``; ``n[0]`` is the number of compiles."""
    n = [0]

    def listener(event, duration, **kwargs):
        if event == _EVENT:
            n[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield n
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
