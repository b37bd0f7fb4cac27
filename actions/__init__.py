"""Jisr's Rasa custom actions, one module per feature.

They run in-process inside Jisr (see jisr/assistant/action_endpoint.py) or in
a separate `rasa_sdk` action server: ``python -m rasa_sdk --actions actions``.
"""
