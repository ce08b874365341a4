"""The number formats every view of the report shares (parameters, megabytes, perplexity,
percentages, rates), with a dash where a number is unknown."""

from __future__ import annotations

DASH = "–"


def fmt_params(n: float | None, missing: str = DASH) -> str:
    """134515008 -> '134.5M'.

    >>> fmt_params(134_515_008), fmt_params(None)
    ('134.5M', '–')
    """
    if n is None:
        return missing
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:.0f}"


def fmt_megabytes(size_bytes: float | None, missing: str = DASH) -> str:
    """Three significant figures or so: 538 / 19.8 / 0.54 (MB, 10^6 bytes)."""
    if size_bytes is None:
        return missing
    mb = size_bytes / 1e6
    return f"{mb:.0f}" if mb >= 100 else f"{mb:.1f}" if mb >= 10 else f"{mb:.2f}"


def fmt_perplexity(ppl: float | None, missing: str = DASH) -> str:
    if ppl is None:
        return missing
    return f"{ppl:.0f}" if ppl >= 1000 else f"{ppl:.2f}"


def fmt_percent(fraction: float | None, digits: int = 1, missing: str = DASH) -> str:
    return missing if fraction is None else f"{fraction * 100:.{digits}f}%"


def fmt_rate(rate: float | None, missing: str = DASH) -> str:
    return missing if rate is None else f"{rate:.1f}"


def fmt_number(value: float | None, digits: int = 3, missing: str = DASH) -> str:
    return missing if value is None else f"{value:.{digits}f}"
