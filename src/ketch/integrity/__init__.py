"""Integrity: fsck of a repository, parity (par2) for its packs, and repair."""
