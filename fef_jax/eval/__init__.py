"""Experiment logic that entry points and notebooks share."""
