"""Stores: PostgreSQL (source of truth), Redis (dispatch index), embedded servers."""
