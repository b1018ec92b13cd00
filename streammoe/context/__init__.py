"""Time context: each record judged together with its asset's recent past.

settings.py (ContextConfig), store.py (per-asset ring buffers, batched windows), features.py (what a window
says), inputs.py (record -> the experts' input), timeline.py (a series file's time axis). Nothing is imported
here: the settings are read by code that must not load torch (the Kafka layer, through the config)."""
