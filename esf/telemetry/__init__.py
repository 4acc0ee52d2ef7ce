"""ESF package."""
