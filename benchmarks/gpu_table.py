"""One table of what ``benchmarks/gpu_check.sh`` measured: stage, throughput, MFU (against the dense peak and
against the measured matmul rate), speed-up over the eager path where one was measured side by side, peak memory.

    python benchmarks/gpu_table.py OUT_DIR          # reads gpu_smoke.json, generation.json, matmul.json there
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def rows(out: Path) -> list[tuple[str, str, str, str, str]]:
    matmul = load(out / "matmul.json")
    measured = matmul["flops_per_s"] if matmul else None
    table = []
    for r in load(out / "gpu_smoke.json") or []:
        unit = next((k for k in r if k.endswith("_per_s") and k != "batches_per_s"), None)
        value = f"{r[unit]:,.1f} {unit[:-6].replace('_', ' ')}/s" if unit else "—"
        mfu = r.get("mfu")
        mfu_text = "—" if mfu is None else f"{100 * mfu:.1f} %" + (
            f" ({100 * mfu * 989e12 / measured:.1f} % of measured)" if measured else "")
        mem = r.get("peak_gpu_gib")
        table.append((r["stage"], value, mfu_text, "—", "—" if mem is None or mem != mem else f"{mem:.1f} GiB"))
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
    lines = ["| stage | throughput | MFU (989 TFLOP/s dense bf16) | speed-up over eager | peak memory |",
             "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows(out)]
    text = "\n".join(lines)
    print(text)
    (out / "table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
