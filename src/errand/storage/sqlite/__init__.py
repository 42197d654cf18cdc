"""sqlite storage."""
