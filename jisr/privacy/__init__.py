"""Privacy: what Jisr keeps about a family, for how long, and how it is given back or forgotten.

One module per concern: pseudonyms for logs and the suppression list (pseudonym.py), the
Redis state of one conversation (state.py), a contact's export (export.py), erasure
(erasure.py), the retention purge (retention.py), logging rules (logs.py) and the bot's
disclosure (disclosure.py). docs/privacy.md says the same for people.
"""
