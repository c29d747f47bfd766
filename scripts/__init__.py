"""Operational entry points: local launcher and helpers for running the stack."""
