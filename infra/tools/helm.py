"""`helm lint` and `helm template` for infra/check where no helm binary can be installed.

Runs Helm's own Go code (the Helm v4 SDK, bundled as a native library in the PyPI wheel
helm-python-sdk) rather than the helm CLI, which no package registry reachable here ships:

    python helm.py lint CHART_DIR [--strict] [-f VALUES.yaml]
    python helm.py template RELEASE CHART_DIR [--namespace NS] [-f VALUES.yaml]

`lint` prints each finding as helm does ([INFO], [WARNING], [ERROR]) and exits 1 on an error
(or, with --strict, on a warning). `template` prints the rendered manifests, hooks included and
NOTES.txt left out, as one YAML stream with `# Source:` comments, like `helm template`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml  # comes with kubernetes-validate
from helm_python.chart import Chart, lint

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def load_values(files: list[str]) -> dict[str, Any] | None:
    values: dict[str, Any] = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            values = merge(values, yaml.safe_load(f) or {})
    return values or None


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def cmd_lint(args: argparse.Namespace) -> int:
    report = lint(args.chart, load_values(args.values), strict=args.strict)
    worst = 0
    for message in report.get("messages") or []:
        severity = int(message.get("severity", 0))
        worst = max(worst, severity)
        print(f"[{SEVERITY.get(severity, severity)}] {message.get('path')}: {message.get('error')}")
    for error in report.get("errors") or []:
        worst = 3
        print(f"[ERROR] {error}")
    failed = worst >= 3 or (args.strict and worst >= 2)
    print(f"{report.get('total_charts_linted', 0)} chart(s) linted, {1 if failed else 0} chart(s) failed")
    return 1 if failed else 0


def cmd_template(args: argparse.Namespace) -> int:
    chart = Chart.load(args.chart)
    rendered = chart.render(
        load_values(args.values), name=args.release, namespace=args.namespace, is_install=True
    )
    for path in sorted(rendered):
        text = rendered[path].strip()
        if path.endswith("NOTES.txt") or not text:
            continue
        print("---")
        print(f"# Source: {path}")
        print(text)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="helm.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("lint")
    p.add_argument("chart")
    p.add_argument("--strict", action="store_true")
    p.add_argument("-f", "--values", action="append", default=[])
    p.set_defaults(run=cmd_lint)
    p = sub.add_parser("template")
    p.add_argument("release")
    p.add_argument("chart")
    p.add_argument("--namespace", default="default")
    p.add_argument("-f", "--values", action="append", default=[])
    p.set_defaults(run=cmd_template)
    args = parser.parse_args()
    try:
        return int(args.run(args))
    except Exception as e:  # a render or load error: one line, like helm
        print(f"Error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
