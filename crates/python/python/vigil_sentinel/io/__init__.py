"""Index storage types."""
