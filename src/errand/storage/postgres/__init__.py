"""postgres storage."""
