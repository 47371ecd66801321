"""Route handlers, one controller per area."""
