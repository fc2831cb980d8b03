"""Tests against real remotes (a private sshd on 127.0.0.1)."""
