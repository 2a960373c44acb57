"""The HTTP side: CoScale's Webhook and API contacts, health, metrics."""
