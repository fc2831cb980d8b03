"""The backup server: `ketch server` over ssh, and the client that talks to it
(or to a real `bup server`) with bup 0.33's protocol (bup-format.md section 6)."""
