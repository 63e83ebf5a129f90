"""Log a condition once when it starts and once when it ends.

An agent that ticks every 2 s must not log the same failure 43200 times a
day, nor hide that it recovered. Every "log once per state change" in the
agent, its publishers, the inventories and the Ceilometer pollsters goes
through this one helper.
"""

import logging
import threading


class StateLog:
    """Per key: ``failed`` logs only when the key was not failing (or its
    state changed), ``recovered`` logs only when it was failing."""

    def __init__(self, logger):
        self._log = logger
        self._active = {}            # key -> state
        self._lock = threading.Lock()  # pollsters and the sampler share one

    def failed(self, key, message, *args, level=logging.ERROR,
               state=True):
        """Record ``key`` as failing with ``state``; log it if that is
        news. True when it was logged."""
        with self._lock:
            news = self._active.get(key) != state
            self._active[key] = state
        if news:
            self._log.log(level, message, *args)
        return news

    def recovered(self, key, message=None, *args, level=logging.INFO):
        """Clear ``key``; log ``message`` if it was failing. True when it
        was failing."""
        with self._lock:
            was_failing = self._active.pop(key, None) is not None
        if was_failing and message:
            self._log.log(level, message, *args)
        return was_failing

    def is_failing(self, key):
        return key in self._active

    def forget(self, key):
        """Drop ``key`` without logging (the thing it was about is gone)."""
        with self._lock:
            self._active.pop(key, None)

    def clear(self):
        with self._lock:
            self._active.clear()
