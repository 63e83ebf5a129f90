"""Carbon and facility overhead ([accounting], doc/carbon.md)."""
