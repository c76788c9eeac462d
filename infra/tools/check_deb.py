"""Checks [package.metadata.deb] of edge-agent/Cargo.toml without building the package.

What cargo-deb would need and otherwise only finds out at packaging time: every asset source
exists (the binary excepted: it comes from the release build), conf-files are assets under /etc,
the maintainer-scripts directory exists and its scripts carry the #DEBHELPER# token, and
unit-scripts holds the unit named like the package. Prints one line per finding; exit 1 if any.
"""

from __future__ import annotations

import os
import sys
import tomllib


def main(manifest: str) -> int:
    crate = os.path.dirname(os.path.abspath(manifest))
    with open(manifest, "rb") as f:
        cargo = tomllib.load(f)
    deb = cargo.get("package", {}).get("metadata", {}).get("deb")
    problems: list[str] = []
    if deb is None:
        print(f"{manifest}: no [package.metadata.deb]")
        return 1
    package = deb.get("name", cargo["package"]["name"])
    destinations = set()
    for asset in deb.get("assets", []):
        source, dest, mode = asset
        destinations.add("/" + dest.lstrip("/"))
        if not source.startswith("target/") and not os.path.isfile(os.path.join(crate, source)):
            problems.append(f"asset source {source} does not exist")
        if int(mode, 8) & ~0o7777:
            problems.append(f"asset {source}: bad mode {mode}")
    for conf in deb.get("conf-files", []):
        if not conf.startswith("/etc/"):
            problems.append(f"conf-file {conf} is not under /etc")
        if conf not in destinations:
            problems.append(f"conf-file {conf} is not installed by any asset")
    scripts = deb.get("maintainer-scripts")
    units = deb.get("systemd-units")
    if units is not None and scripts is None:
        problems.append("systemd-units needs maintainer-scripts (cargo-deb)")
    if scripts is not None:
        scripts_dir = os.path.join(crate, scripts)
        if not os.path.isdir(scripts_dir):
            problems.append(f"maintainer-scripts {scripts} is not a directory")
        else:
            for name in os.listdir(scripts_dir):
                path = os.path.join(scripts_dir, name)
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                if units is not None and "#DEBHELPER#" not in text:
                    problems.append(f"maintainer script {name} lacks the #DEBHELPER# token")
                if not os.access(path, os.X_OK):
                    problems.append(f"maintainer script {name} is not executable")
    if units is not None:
        unit_dir = os.path.join(crate, units.get("unit-scripts", scripts or ""))
        unit_name = units.get("unit-name", package)
        candidates = [f"{package}.service", f"{unit_name}.service", f"{package}.{unit_name}.service"]
        if not any(os.path.isfile(os.path.join(unit_dir, c)) for c in candidates):
            problems.append(f"no unit file {' or '.join(candidates)} in {unit_dir}")
    for p in problems:
        print(f"{manifest}: {p}")
    if not problems:
        print(f"{manifest}: [package.metadata.deb] of {package}: "
              f"{len(deb.get('assets', []))} assets, {len(deb.get('conf-files', []))} conf-files, unit ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "edge-agent/Cargo.toml"))
