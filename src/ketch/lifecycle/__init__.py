"""What happens to a repository over time: which saves stay (prune) and the
space the others held (gc)."""
