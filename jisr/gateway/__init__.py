"""The gateway: webhooks of every channel, the web chat, and the path from a family's message to the assistant and back."""
