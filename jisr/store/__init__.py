"""Durable state in SQL: contacts, the message log, consent (SQLite by default, PostgreSQL by DATABASE_URL)."""
