"""One table of what ``benchmarks/gpu_check.sh`` measured: stage, throughput, MFU (against the dense peak and
against the measured matmul rate), speed-up over today's path (eager decoding; today's training settings) where
one was measured side by side, peak memory.

    python benchmarks/gpu_table.py OUT_DIR   # reads gpu_smoke.json, train_speed.json, generation.json, matmul.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def mfu_text(mfu: float | None, measured: float | None) -> str:
    """MFU against the dense peak, and against the measured matmul rate when there is one."""
    if mfu is None:
        return "—"
    return f"{100 * mfu:.1f} %" + (f" ({100 * mfu * 989e12 / measured:.1f} % of measured)" if measured else "")


def rows(out: Path) -> list[tuple[str, str, str, str, str]]:
    matmul = load(out / "matmul.json")
    measured = matmul["flops_per_s"] if matmul else None
    table = []
    for r in load(out / "gpu_smoke.json") or []:
        unit = next((k for k in r if k.endswith("_per_s") and k != "batches_per_s"), None)
        value = f"{r[unit]:,.1f} {unit[:-6].replace('_', ' ')}/s" if unit else "—"
        mem = r.get("peak_gpu_gib")
        mem_text = "—" if mem is None or mem != mem else f"{mem:.1f} GiB"
        table.append((r["stage"], value, mfu_text(r.get("mfu"), measured), "—", mem_text))
    for r in load(out / "train_speed.json") or []:  # training steps, today's settings against the speed-ups
        unit = next(k for k in r if k.endswith("_per_s"))
        speed = f"{r['speedup_vs_today']:.2f}x" if r.get("speedup_vs_today") else "—"
        mem = r.get("peak_gpu_gib")
        table.append((f"{r['stage']} step ({r['variant']})", f"{r[unit]:,.1f} {unit[:-6].replace('_', ' ')}/s",
                      mfu_text(r.get("mfu"), measured), speed, "—" if mem is None else f"{mem:.1f} GiB"))
    gen = load(out / "generation.json")
    for r in (gen or {}).get("modes", []):
        speed = f"{r['speedup_vs_eager']:.1f}x" if r.get("speedup_vs_eager") else "—"
        floor = f" ({r['x_floor']:.1f}x the bandwidth floor)" if r.get("x_floor") else ""
        table.append((f"generate ({r['mode']})", f"{r['tokens_per_s']:,.0f} tokens/s{floor}", "—", speed, "—"))
    if measured:
        table.append(("bf16 matmul", f"{measured / 1e12:.1f} TFLOP/s", "—", "—", "—"))
    return table


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:])[0])
    lines = ["| stage | throughput | MFU (989 TFLOP/s dense bf16) | speed-up over today's path | peak memory |",
             "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows(out)]
    text = "\n".join(lines)
    print(text)
    (out / "table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
