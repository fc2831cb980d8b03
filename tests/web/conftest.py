"""The S3 server of the offsite tests, for the dashboard served from a mirror."""

from tests.offsite.conftest import s3_env, s3_server, s3_url

__all__ = ["s3_env", "s3_server", "s3_url"]
