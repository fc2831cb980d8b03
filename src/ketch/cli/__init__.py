"""Command-line front end: one small module per command (parse, call, print)."""
