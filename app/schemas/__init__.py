"""Pydantic schemas at the API edge."""
