"""Generative module assemblers: compact task- and budget-specific models."""
