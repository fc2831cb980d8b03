"""Backup jobs: one TOML file per machine (config), database dumps streamed into
the repository (dumps), the nightly run (runner), its timer (schedule) and
its notifications (notify)."""
