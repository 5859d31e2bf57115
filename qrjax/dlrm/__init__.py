"""DLRM with a compressed embedding all-to-all."""
