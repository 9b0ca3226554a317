"""Webhooks: endpoints (controller.py), the events they can receive (events.py), signing
(signing.py) and the delivery worker (delivery.py). docs/webhooks.md."""
