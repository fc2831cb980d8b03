"""What happens to a repository after its saves: retention (which saves to
keep, `prune`) and garbage collection (`gc`), on one repository or on every
repository of a backup server (`fleet`)."""
