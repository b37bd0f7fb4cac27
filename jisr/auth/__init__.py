"""Accounts of the people who use the consoles (admins, operators, mediators): passwords,
sessions, CSRF, API tokens, roles and the countries each may see, and the audit log."""
