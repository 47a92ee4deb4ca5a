"""The chart's PromQL, read from its single sources, for the checks in this directory.

helm/stockflow/files/alerts.yaml (alert rules) and helm/stockflow/files/dashboard.json (the
Grafana dashboard) are what the chart ships; check_chart.py checks them with promtool,
check_prometheus.py runs them against a real Prometheus scraping the workers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

CHART = Path(__file__).resolve().parents[1] / "stockflow"

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                "offset", "bool", "inf", "nan", "le"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (good enough for our own expressions)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                      # strings
    e = re.sub(r"\{[^}]*\}", "", e)                                   # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                                  # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)  # label lists
    e = re.sub(r"\boffset\s+\w+", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def alert_rules() -> list[dict]:
    import yaml

    doc = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) for every query of the dashboard, nested rows included."""
    dash = json.loads((CHART / "files" / "dashboard.json").read_text())
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels", []))

    walk(dash["panels"])
    return out


def grafana_to_promql(expr: str, rate_interval: str = "5m") -> str:
    """What Grafana sends to Prometheus: its variables replaced (every namespace selected)."""
    return expr.replace("$__rate_interval", rate_interval).replace("$namespace", ".*")


# --------------------------------------------------------------------------------------------
# Splitting an alert condition into the expressions that carry its data
# --------------------------------------------------------------------------------------------

# Binary operators by precedence, lowest first (PromQL: `or` < `and`/`unless` < comparisons).
SET_OPERATORS = [("or",), ("and", "unless")]
COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")
_MODIFIER = re.compile(r"^\s*(?:bool\b\s*)?(?:(?:on|ignoring)\s*\([^)]*\)\s*)?(?:(?:group_left|group_right)\s*(?:\([^)]*\))?\s*)?")
_NUMBER = re.compile(r"^\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\s*$")


def _top_level_split(expr: str, operators: tuple[str, ...]) -> list[str]:
    """Operands of `expr` joined by any of `operators` outside (), [], {} and strings."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            end = i + 1
            while end < len(expr) and expr[end] != c:
                end += 2 if expr[end] == "\\" else 1
            i = end + 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            for op in operators:
                word = op.isalpha()
                if not expr.startswith(op, i):
                    continue
                if word and (re.match(r"\w", expr[i - 1:i] or " ") or re.match(r"\w", expr[i + len(op):i + len(op) + 1] or " ")):
                    continue
                # `>` must not be the first half of `>=`, nor `=` of `=~` (those sit in {} anyway).
                if not word and expr[i + len(op):i + len(op) + 1] == "=":
                    continue
                parts.append(expr[start:i])
                i += len(op)
                start = i
                break
            else:
                i += 1
                continue
            continue
        i += 1
    parts.append(expr[start:])
    return parts


def _strip_parens(expr: str) -> str:
    expr = expr.strip()
    while expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, c in enumerate(expr):
            depth += c == "("
            depth -= c == ")"
            if depth == 0 and i < len(expr) - 1:
                return expr  # `(a) + (b)`: the outer parentheses are not one pair
        expr = expr[1:-1].strip()
    return expr


def data_legs(expr: str) -> list[str]:
    """The expressions whose series an alert condition is made of.

    An alert expression is a condition: `x > 5` returns nothing while all is well, so "returns
    no data" says nothing about whether `x` exists. What must return data is what the condition
    looks at: each operand of a top-level `or` / `and` / `unless` (matching modifiers such as
    `on (...)` dropped), and of a comparison against a number its left-hand side. Everything
    else (arithmetic, functions, aggregations) stays whole: it is one measured quantity.
    """
    expr = _strip_parens(expr)
    for operators in SET_OPERATORS:
        parts = _top_level_split(expr, operators)
        if len(parts) > 1:
            legs = []
            for part in parts:
                part = _MODIFIER.sub("", part, count=1)
                legs.extend(data_legs(part))
            return legs
    parts = _top_level_split(expr, COMPARISONS)
    if len(parts) == 2 and _NUMBER.match(_MODIFIER.sub("", parts[1], count=1)):
        return data_legs(parts[0])
    return [expr]
