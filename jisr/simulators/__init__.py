"""Local simulators of the providers' APIs (Twilio, Telegram Bot API, Graph API).

They accept the real request formats, record what they receive, send signed
webhooks, and inject failures. Tests, demos and benchmarks use them: nothing
reaches the internet.
"""
