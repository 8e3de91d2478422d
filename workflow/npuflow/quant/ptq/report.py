"""The ptq stage's report in words: for MLflow params and the HTML report."""

from __future__ import annotations

_SKIP = {"status", "value", "verified", "seconds", "reason", "output_scale"}


def method_text(entry: dict) -> str:
    """One method's line: 'applied (pairs 34, max_abs_diff 2.3e-05; verified; 0.17 s)',
    'not applicable: <why>' or 'disabled'."""
    status = entry.get("status", "")
    if status == "not applicable":
        return f"not applicable: {entry.get('reason', '')}"
    if status != "applied":
        return status
    figures = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items() if k not in _SKIP)
    verdict = "verified" if entry.get("verified") else "NOT verified"
    return f"applied ({figures}; {verdict}; {entry.get('seconds', 0):.2f} s)"
