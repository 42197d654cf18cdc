"""`errand demo`: the quick start scenario."""
