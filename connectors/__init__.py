"""Channel connectors (WhatsApp through Twilio, Telegram, Messenger, web chat): issue 4.

Empty for now: the assistant is reached through `jisr ask` until the gateway lands.
"""
