"""File commands: series files, offline fit and score, replay of a file into Kafka."""
