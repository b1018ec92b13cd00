"""New operating modes: notice them, grow an expert for them, retire and merge experts (CN-DPM style)."""
