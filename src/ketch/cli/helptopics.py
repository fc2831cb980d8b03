"""`ketch help TOPIC`: reference pages too long for `--help`; the config page is
ketch.jobs.configdoc's."""

from __future__ import annotations

from ketch.jobs.configdoc import config_reference


def repository_topic() -> str:
    return """\
Which repository a command uses, first match wins:
  -d DIR          a local repository directory (before or after the command name)
  -r REMOTE       a backup server: [USER@]HOST:[PATH], ssh://[USER@]HOST[:PORT]/PATH,
                  :PATH (a server run locally), or a bucket: s3://BUCKET/PREFIX/REPO
                  (with --endpoint-url URL and --encrypt-key FILE when needed)
  $KETCH_DIR      a local repository directory
  the config      the `repository` of $KETCH_CONFIG, else /etc/ketch/ketch.toml, when
                  that file exists (on a terminal, ketch says it uses it)
  ~/.ketch        otherwise
"""


TOPICS = {
    "config": ("every key of the config file (ketch.toml)", config_reference),
    "repository": ("which repository a command uses (-d, -r, $KETCH_DIR, the config)",
                   repository_topic),
}
