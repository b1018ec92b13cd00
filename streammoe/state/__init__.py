"""What a worker knows and how it survives and moves: model state, checkpoints, snapshots, scopes, ownership."""
