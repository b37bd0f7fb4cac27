"""Handing conversations to school mediators and back: when (triggers), what the family is told
(working hours), what the gateway does while a person holds a conversation, the mediators'
JSON API (/api/mediation) and escalation of handoffs left waiting."""
