"""Shared code for every Binormal service: keys, scoring, schema, Redis plumbing."""
