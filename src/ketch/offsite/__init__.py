"""Offsite copies: an incremental, verified mirror of repositories in an object
store (S3), readable directly (ls, cat-file, restore) without pulling it back."""
