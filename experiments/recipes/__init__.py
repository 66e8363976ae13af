"""Recipes that reproduce measured results (docs/results.md) end to end."""
