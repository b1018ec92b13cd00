"""The only code that talks to the broker: consumer, producer, control reader, broker outages."""
