"""`/metrics`: the fleet in Prometheus' text format (version 0.0.4), so an
existing Prometheus and Alertmanager can alert on a stale or failing backup:

    ketch_last_save_timestamp_seconds{machine,set}
    ketch_last_run_timestamp_seconds{machine}      ketch_last_run_exit_code{machine}
    ketch_last_run_warnings{machine}
    ketch_repository_bytes{machine}                ketch_repository_growth_bytes_per_day{machine}
    ketch_last_mirror_push_timestamp_seconds{machine}   ketch_last_mirror_push_ok{machine}
    ketch_last_mirror_verify_timestamp_seconds{machine} ketch_last_mirror_verify_ok{machine}
    ketch_last_drill_timestamp_seconds{machine}    ketch_last_drill_ok{machine}
    ketch_last_fsck_timestamp_seconds{machine}     ketch_last_fsck_ok{machine}
    ketch_machine_status{machine}                  0 ok, 1 warning, 2 failing (the overview's colour)
    ketch_repository_up{machine}                   0 when the repository could not be read

A machine without a report of some kind has no sample for it: an alert on
`absent(...)` or on age tells "never ran" from "ran long ago".
"""

from __future__ import annotations

from collections.abc import Iterable

from ketch.web.summary import Facts, ReportHead, judge

_HELP = {
    "ketch_last_save_timestamp_seconds": ("gauge", "Author time of the newest save of a set."),
    "ketch_last_run_timestamp_seconds": ("gauge", "When the last ketch run stored its report."),
    "ketch_last_run_exit_code": ("gauge", "Exit code of the last ketch run: 0 ok, 1 warnings, "
                                          "2 failed."),
    "ketch_last_run_warnings": ("gauge", "Warnings in the last ketch run's report."),
    "ketch_repository_bytes": ("gauge", "Bytes of the repository's packs."),
    "ketch_repository_growth_bytes_per_day": ("gauge", "Pack bytes written a day, last 30 "
                                                       "days."),
    "ketch_last_mirror_push_timestamp_seconds": ("gauge", "When the last mirror push ended."),
    "ketch_last_mirror_push_ok": ("gauge", "1 if the last mirror push succeeded."),
    "ketch_last_mirror_verify_timestamp_seconds": ("gauge", "When the last mirror verify ended."),
    "ketch_last_mirror_verify_ok": ("gauge", "1 if the last mirror verify found nothing missing or damaged."),
    "ketch_last_drill_timestamp_seconds": ("gauge", "When the last restore drill ended."),
    "ketch_last_drill_ok": ("gauge", "1 if the last restore drill passed."),
    "ketch_last_fsck_timestamp_seconds": ("gauge", "When the last fsck ended."),
    "ketch_last_fsck_ok": ("gauge", "1 if the last fsck found nothing damaged (exit code below 2)."),
    "ketch_machine_status": ("gauge", "The overview's colour: 0 ok, 1 warning, 2 failing."),
    "ketch_repository_up": ("gauge", "1 if the repository could be read."),
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def render(fleet: Iterable[Facts], now: float) -> str:
    samples: dict[str, list[str]] = {name: [] for name in _HELP}

    def put(name: str, labels: dict[str, str], value: float) -> None:
        text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        samples[name].append(f"{name}{{{text}}} {_num(value)}")

    for f in fleet:
        m = {"machine": f.machine}
        put("ketch_repository_up", m, 0 if f.error else 1)
        put("ketch_machine_status", m, judge(f, now).status)
        if f.error:
            continue
        for s in f.sets:
            put("ketch_last_save_timestamp_seconds", dict(m, set=s.name), s.last_save)
        put("ketch_repository_bytes", m, f.repo_bytes)
        growth = f.growth_per_day(now)
        if growth is not None:
            put("ketch_repository_growth_bytes_per_day", m, round(growth))
        if f.run is not None:
            put("ketch_last_run_timestamp_seconds", m, f.run.time)
            put("ketch_last_run_exit_code", m, f.run.exit_code)
            put("ketch_last_run_warnings", m, f.run.warnings)
        heads: tuple[tuple[str, ReportHead | None], ...] = (
            ("mirror_push", f.push), ("mirror_verify", f.verify), ("drill", f.drill),
            ("fsck", f.fsck))
        for what, head in heads:
            if head is not None:
                put(f"ketch_last_{what}_timestamp_seconds", m, head.time)
                put(f"ketch_last_{what}_ok", m, 1 if head.ok else 0)
    out = []
    for name, (kind, text) in _HELP.items():
        out.append(f"# HELP {name} {text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(samples[name])
    return "\n".join(out) + "\n"
