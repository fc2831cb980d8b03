"""The git on-disk format and nothing else.

objects: object ids, headers, tree/commit encoding.
pack:    a pack writer that streams objects into pack v2 files and writes the v2 idx at close.
idx:     mmap'd idx v2 readers; midx and bloom (bup's formats) for fast existence checks.
packread: object reads by id from packs (with git's deltas) and loose objects.
entry:   one pack entry decoded, bounded (packread, the S3 reader and the server use it).
delta:   git's delta format applied.
refs:    refs read and moved only by compare-and-swap.
"""
