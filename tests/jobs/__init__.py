"""Tests of backup jobs: config, dumps, runner, schedule, notify."""
