"""The quality benchmark of docs/evaluation.md (tracks T1-T3, peers side by side) and a scoring-speed probe."""
