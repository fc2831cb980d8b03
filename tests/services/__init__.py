"""Real services (sshd, ...) started on loopback for the test suite."""
