"""ketch: deduplicating backups in git-format repositories, compatible with bup 0.33.

Layers, imported one way only:
  git/ (objects, packs, idx/midx/bloom, refs)
    -> split, index, metadata
    -> repo (one Repository interface: local, remote, S3)
    -> save, restore, vfs
    -> remote, offsite, jobs, web
    -> cli
"""

__version__ = "0.1.0"
