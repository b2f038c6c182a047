"""The report of ``mpcl bench step``: the markdown table, the verdict on the augmentation,
and the section (results folder, BENCHMARKS.md) with the machine and the method of measurement."""

from __future__ import annotations

import datetime
import os

from mpcl.bench.record import cpu_model, versions
from mpcl.bench.step_settings import SETTINGS, StepReport, peak_bf16_flops
from mpcl.data.process import available_cpus


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def format_table(report: StepReport) -> str:
    """The markdown table of a run (what is printed and written into BENCHMARKS.md)."""
    peak = peak_bf16_flops(report.device_name) if report.device == "cuda" else None
    comm = report.workers > 1
    head = ["method", "setting", "samples/s", "x fp32 eager", "no-aug samples/s", "augmentation share",
            "peak memory", "model TFLOP/s", "MFU"]
    if comm:
        head += ["bytes/step: gradients", "DDP buffer broadcast", "method collectives"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * 2 + " ---: |" * (len(head) - 2)]
    for row in report.rows:
        if row.kind != "step":
            continue
        label = SETTINGS[row.setting].label
        if row.skipped:
            lines.append(f"| {row.method} | {label} | skipped: {row.skipped} |" + " |" * (len(head) - 3))
            continue
        model = report.row(f"{row.method}/{row.setting}/model")
        base = next((r for r in report.rows if r.key == f"{row.method}/fp32/step" and r.samples_per_s), None)
        ratio = f"{row.samples_per_s / base.samples_per_s:.2f}x" if base else "-"
        share = f"{1 - row.samples_per_s / model.samples_per_s:.0%}" if model.samples_per_s else "-"
        # FLOPs per step per worker x steps/s per worker
        achieved = row.flops_per_step * row.samples_per_s / report.batch_size
        mfu = f"{achieved / peak:.1%}" if peak and achieved else ("n/a" if report.device != "cuda" else "unknown GPU")
        cells = [row.method, label, f"{row.samples_per_s:,.0f}", ratio,
                 f"{model.samples_per_s:,.0f}" if model.samples_per_s else "-", share,
                 _mib(row.peak_bytes), f"{achieved / 1e12:.3g}" if achieved else "-", mfu]
        if comm:
            cells += [_bytes(row.comm.get(k, 0)) for k in ("gradients", "buffers", "method")]
        lines.append("| " + " | ".join(cells) + " |")
    aug = [r for r in report.rows if r.kind in ("augment", "kornia")]
    if aug:
        lines += ["", "| augmentation alone (two views of a uint8 batch) | samples/s | peak memory |",
                  "| --- | ---: | ---: |"]
        names = {"augment": "mpcl (SSLAugment, hand-written)", "kornia": "kornia.augmentation (per-sample parameters)"}
        for r in aug:
            if r.skipped:
                lines.append(f"| {names[r.kind]} | skipped: {r.skipped} | |")
            else:
                lines.append(f"| {names[r.kind]} | {r.samples_per_s:,.0f} | {_mib(r.peak_bytes)} |")
    return "\n".join(lines)


def augmentation_verdict(report: StepReport) -> str:
    rows = {r.kind: r for r in report.rows if r.kind in ("augment", "kornia")}
    ours, theirs = rows.get("augment"), rows.get("kornia")
    if not ours or not theirs or not ours.samples_per_s or not theirs.samples_per_s:
        return "kornia was not measured: no comparison."
    ratio = ours.samples_per_s / theirs.samples_per_s
    if ratio >= 1.1:
        return (f"On {report.device} mpcl's hand-written augmentation is {ratio:.1f}x kornia's: it is kept "
                f"on {report.device}.")
    return (f"On {report.device} mpcl's hand-written augmentation is {ratio:.2f}x kornia's (not measurably "
            "faster): kornia's pipeline is the candidate to replace it on this device.")


def section_markers(report: StepReport, methods: list[str]) -> tuple[str, str]:
    key = f"{report.device}:{','.join(methods)}:{report.workers}"
    return f"<!-- bench:step:{key}:start -->", f"<!-- bench:step:{key}:end -->"


def render_section(report: StepReport, table: str, command: str, load_before, load_after,
                   start: str, end: str) -> str:
    workers = f"{report.workers} workers (DDP, {'NCCL' if report.device == 'cuda' else 'gloo'})" \
        if report.workers > 1 else "1 process"
    memory = ("torch.cuda.max_memory_allocated above what was allocated before the timed steps"
              if report.device == "cuda" else
              "growth of the process's peak RSS (getrusage ru_maxrss) during the row's warm-up round; rows "
              "measured later reuse memory already held, so this under-counts them")
    lines = [
        start,
        f"## Training step on {report.device}: {report.device_name}, {workers}",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- command: `{command}`",
        f"- machine: {cpu_model()}, {available_cpus()} cores available ({os.cpu_count()} online); load "
        f"average before/after: {load_before[0]:.2f} -> {load_after[0]:.2f}",
        "- libraries: " + ", ".join(f"{k} {v}" for k, v in versions("kornia").items()),
        f"- setup: {report.backbone}, {report.dataset} presets ({report.image_size} px), global batch "
        f"{report.batch_size} (two views each), synthetic uint8 images; {report.rounds - 1} timed round(s) of "
        f"{report.steps} steps per row after a warm-up round, rows alternating",
        f"- peak memory: {memory}",
        *(["- fp32 rows use torch's defaults: cuDNN may run fp32 convolutions in TF32"]
          if report.device == "cuda" else []),
        "- samples/s counts samples (two views each); `no-aug`: the same step on a fixed augmented batch; "
        "augmentation share: 1 - step / no-aug rate",
        "",
        table,
        "",
        augmentation_verdict(report),
    ]
    if report.device == "cuda" and peak_bf16_flops(report.device_name) is None:
        lines += ["", f"MFU omitted: no known bf16 peak for {report.device_name!r} (mpcl/bench/step_settings.py "
                  "PEAK_BF16_FLOPS)."]
    if report.workers > 1:
        for m, ok in report.buffers_agree.items():
            sent = max((r.comm.get("buffers", 0) for r in report.rows if r.method == m and r.kind == "step"), default=0)
            others = report.broadcast_expected.get(m, 0)
            verdict = (f"DDP's per-step broadcast ({_bytes(sent)}) carries only the other buffers ({_bytes(others)})"
                       if sent <= others else
                       f"DDP's per-step broadcast ({_bytes(sent)}) is more than the other buffers ({_bytes(others)}): "
                       "banks or queues are being broadcast")
            lines += ["", f"{m}: worker-consistent buffers ({_bytes(report.consistent_bytes.get(m, 0))}: banks, "
                      f"queues) {'agree' if ok else 'DISAGREE'} on every worker after the run; {verdict}."]
    if load_before[0] > available_cpus():
        lines += ["", f"Note: the load average ({load_before[0]:.1f}) exceeded the {available_cpus()} cores: "
                  "other jobs shared the machine. Rows were timed alternately under the same conditions, but "
                  "absolute figures are below an idle machine's."]
    lines.append(end)
    return "\n".join(lines)
