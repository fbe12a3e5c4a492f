#!/usr/bin/env python3
"""The simulator against the official Konnect spec, with schemathesis.

Starts `konnect-sa-operator sim` on a free loopback port, runs schemathesis (fixed seed, bounded examples, every
check) on the operations the simulator serves (read from src/sim/handlers.rs), and compares the failures with the
known spec gaps (.ci/sim-conformance-known-gaps.txt). Fails on a failure that is not listed, and on a listed gap
that no longer fails (so the list only shrinks). Standard library only: it runs with any python3.

    python3 .ci/sim-conformance.py --binary target/debug/konnect-sa-operator --schemathesis VENV/bin/schemathesis
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A throwaway credential of this run's simulator only.
ADMIN_TOKEN = "kpat_conformance" + "0" * 40
SIM_SEED = "7"
# Seed data with fixed ids: the generated phases reach real objects through these path parameters (random ids
# only ever meet 404). The stateful phase finds its own ids, from a fresh organisation.
TEAM_ID = "0b4c3a52-7d1e-4f0a-9a51-3f3c2c6d7e01"
ACCOUNT_ID = "5d6e7f80-1a2b-4c3d-8e9f-a0b1c2d3e4f5"
# Deletes get objects of their own, so the others still find theirs whatever the order.
DOOMED_TEAM_ID = "0b4c3a52-7d1e-4f0a-9a51-3f3c2c6d7e02"
DOOMED_ACCOUNT_ID = "5d6e7f80-1a2b-4c3d-8e9f-a0b1c2d3e4f6"
SEED_YAML = f"""organization_name: Conformance
teams:
  - {{name: Organization Admin, system_team: true}}
  - {{id: {TEAM_ID}, name: Platform, description: Platform team, labels: {{env: prod}}}}
  - {{id: {DOOMED_TEAM_ID}, name: Doomed, labels: {{env: dev}}}}
system_accounts:
  - id: {ACCOUNT_ID}
    name: ci
    description: conformance account
    teams: [Platform]
    roles:
      - {{role_name: Viewer, entity_type_name: Control Planes, entity_id: "*", entity_region: eu}}
  - {{id: {DOOMED_ACCOUNT_ID}, name: doomed, description: deleted by the run, teams: [Platform, Doomed]}}
"""
# No crash cache: a run depends on its seed alone, and writes nothing into the checkout.
NO_CACHE = """[cache]
enabled = false
"""
FIXED_IDS = NO_CACHE + f"""
[parameters]
"path.teamId" = "{TEAM_ID}"
"path.accountId" = "{ACCOUNT_ID}"

[[operations]]
include-operation-id = "delete-team"
parameters = {{ "path.teamId" = "{DOOMED_TEAM_ID}" }}

[[operations]]
include-operation-id = "delete-system-accounts-id"
parameters = {{ "path.accountId" = "{DOOMED_ACCOUNT_ID}" }}

[[operations]]
include-operation-id = "delete-teams-teamId-system-accounts-accountId"
parameters = {{ "path.accountId" = "{DOOMED_ACCOUNT_ID}" }}
"""


@dataclass(frozen=True)
class Failure:
    operation: str  # "GET /teams/{teamId}", as the spec writes the path
    check: str  # "ST202"
    title: str
    response: str  # status line and body, for matching and for the report
    request: str  # the last curl of the reproduction

    def line(self) -> str:
        text = f"{self.operation} | {self.check} {self.title}\n      {self.response[:300]}\n      {self.request[:300]}"
        # Even a throwaway simulator's token values stay out of CI output.
        return TOKEN_VALUE.sub(r"\1<redacted>", text)


@dataclass
class Gap:
    operation: str
    check: str
    match: str  # "*" or a substring the response must contain
    reason: str
    lineno: int
    seen: bool = False

    def covers(self, f: Failure) -> bool:
        return (
            self.operation in ("*", f.operation)
            and f.check == self.check
            and (self.match == "*" or self.match in f.response)
        )


def served_operations(handlers: Path) -> list[str]:
    """operationIds of the simulator's `OPERATIONS` table."""
    table = handlers.read_text().split("pub const OPERATIONS", 1)[1].split("];", 1)[0]
    ops = re.findall(r'\(\s*"[A-Z]+",\s*"[^"]+",\s*"([^"]+)",?\s*\)', table)
    if not ops:
        sys.exit(f"no operations found in {handlers}")
    return ops


def load_gaps(path: Path) -> list[Gap]:
    gaps = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 4 or not all(parts):
            sys.exit(f"{path}:{n}: want 'METHOD /path | STxxx | match or * | reason', got: {raw}")
        gaps.append(Gap(parts[0], parts[1], parts[2], parts[3], n))
    return gaps


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, sim: subprocess.Popen) -> None:
    req = urllib.request.Request(f"{base}/v3/organizations/me", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    for _ in range(300):
        if sim.poll() is not None:
            sys.exit(f"the simulator exited with {sim.returncode}")
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    sys.exit("the simulator did not answer within 30 s")


def reset(base: str) -> None:
    req = urllib.request.Request(
        f"{base}/_sim/reset", method="POST", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        if r.status >= 300:
            sys.exit(f"POST /_sim/reset answered {r.status}")


def path_matcher(spec: Path):
    """Maps a request URL back to the spec's path template (for stateful failures)."""
    templates = re.findall(r"^  '?(/[^':]*)'?:\s*$", spec.read_text(), re.M)
    compiled = []
    for t in templates:
        rx = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(t))
        compiled.append((re.compile(rf"^/v3{rx}/?(\?.*)?$"), t))
    # Literal segments beat parameters (`/teams/x` before `/teams/{teamId}`).
    compiled.sort(key=lambda c: c[1].count("{"))

    def match(method: str, url: str) -> str:
        path = re.sub(r"^https?://[^/]+", "", url)
        for rx, t in compiled:
            if rx.match(path):
                return f"{method} {t}"
        return f"{method} {path.split('?')[0]}"

    return match


TOKEN_VALUE = re.compile(r"\b(spat_|kpat_)[A-Za-z0-9]+")
CURL = re.compile(r"^\s*curl -X (\w+) .*?'?(https?://[^\s']+)'?\s*$", re.M)


def parse_junit(report: Path, match_path) -> tuple[list[Failure], list[str]]:
    """Failures, and errors (schemathesis could not test something: never a known gap)."""
    failures, errors = [], []
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name", "")
        for err in case.findall("error"):
            errors.append(f"{name}: {(err.get('message') or '')} {(err.text or '')[-500:]}")
        for fail in case.findall("failure"):
            for block in re.split(r"(?m)^\d+\. Test Case ID: \S+\s*$", fail.text or ""):
                checks = re.findall(r"(?m)^- (ST\d+) (.+)$", block)
                if not checks:
                    continue
                resp = re.search(r"(?m)^(\[\d+\] .*)$\s*(.*)$", block)
                response = f"{resp.group(1)} {resp.group(2).strip()}" if resp else ""
                curls = CURL.findall(block)
                request = f"{curls[-1][0]} {curls[-1][1]}" if curls else ""
                op = name
                if not re.match(r"^[A-Z]+ /", name) and curls:
                    op = match_path(*curls[-1])  # stateful: the request that failed is the last one
                for code, title in checks:
                    failures.append(Failure(op, code, title.strip(), response, request))
    return failures, errors


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(ROOT / "target/debug/konnect-sa-operator"))
    ap.add_argument("--schemathesis", default="schemathesis")
    ap.add_argument("--spec", default=os.environ.get("KONNECT_OPENAPI", str(ROOT / "../shared/konnect/identity-openapi.yaml")))
    ap.add_argument("--gaps", default=str(ROOT / ".ci/sim-conformance-known-gaps.txt"))
    ap.add_argument("--seed", default="20261")
    ap.add_argument("--max-examples", default="100")
    ap.add_argument("--report-dir", default=None, help="keep the reports here (default: a temporary directory)")
    args = ap.parse_args()

    spec = Path(args.spec).resolve()
    if not spec.is_file():
        sys.exit(f"no Konnect spec at {spec}")
    ops = served_operations(ROOT / "src/sim/handlers.rs")
    gaps = load_gaps(Path(args.gaps))
    report_dir = Path(args.report_dir or tempfile.mkdtemp(prefix="sim-conformance-")).resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "seed.yaml").write_text(SEED_YAML)
    (report_dir / "fixed-ids.toml").write_text(FIXED_IDS)
    (report_dir / "none.toml").write_text(NO_CACHE)
    # (phases, schemathesis config): generated requests on the seeded objects, then call sequences from a reset.
    runs = [("examples,coverage,fuzzing", "fixed-ids.toml"), ("stateful", "none.toml")]

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, KONNECT_SIM_ADMIN_TOKEN=ADMIN_TOKEN, RUST_LOG="info")
    with open(report_dir / "sim.log", "w") as log:
        sim = subprocess.Popen(
            [args.binary, "sim", "--listen", f"127.0.0.1:{port}", "--seed", SIM_SEED, "--seed-file", str(report_dir / "seed.yaml")],
            env=env,
            stdout=log,
            stderr=log,
        )
    reports = []
    try:
        wait_ready(base, sim)
        print(f"schemathesis on {len(ops)} operations, seed {args.seed}, at most {args.max_examples} examples each")
        for phases, config in runs:
            reset(base)
            name = phases.split(",")[0]
            junit = report_dir / f"junit-{name}.xml"
            cmd = [args.schemathesis, "--config-file", str(report_dir / config), "run", str(spec)]
            cmd += ["--url", f"{base}/v3", "--header", f"Authorization: Bearer {ADMIN_TOKEN}", "--phases", phases]
            for op in ops:
                cmd += ["--include-operation-id", op]
            cmd += [
                "--checks", "all",
                "--seed", args.seed,
                "--max-examples", args.max_examples,
                "--workers", "1",  # one simulator, one state: requests in a reproducible order
                "--generation-database", "none",
                "--no-color",
                "--report", "junit",
                "--report-junit-path", str(junit),
            ]
            started = time.monotonic()
            run = subprocess.run(
                cmd, capture_output=True, text=True, cwd=report_dir, env=dict(os.environ, NO_COLOR="1")
            )
            (report_dir / f"schemathesis-{name}.txt").write_text(run.stdout + run.stderr)
            print(f"  {phases}: exit {run.returncode} after {time.monotonic() - started:.0f}s ({report_dir}/schemathesis-{name}.txt)")
            if not junit.is_file():
                print(run.stdout[-3000:], run.stderr[-3000:])
                sys.exit("schemathesis wrote no JUnit report")
            reports.append(junit)
    finally:
        sim.terminate()
        try:
            sim.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sim.kill()

    failures, errors = [], []
    for junit in reports:
        f, e = parse_junit(junit, path_matcher(spec))
        failures += f
        errors += e
    new = []
    for f in failures:
        covering = [g for g in gaps if g.covers(f)]
        for g in covering:
            g.seen = True
        if not covering and f not in new:
            new.append(f)
    fixed = [g for g in gaps if not g.seen]

    known = len(failures) - len([f for f in failures if f in new])
    print(f"{len(failures)} failures: {known} known spec gaps, {len(new)} new; {len(errors)} errors")
    for f in new:
        print(f"NEW  {f.line()}")
    for e in errors:
        print(f"ERROR {e}")
    for g in fixed:
        print(f"GONE {g.operation} | {g.check} | {g.match}  (line {g.lineno}: no longer fails; remove it)")
    if new or errors or fixed:
        return 1
    print(f"conformance: ok ({len(gaps)} known gaps, all still present)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
