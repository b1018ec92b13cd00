"""The formats on the topics: records in, alerts and events out, their JSON schemas."""
