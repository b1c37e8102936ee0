"""`pgdr report`: the incident record of a drill, failover, switchover, rejoin, restore or
verification, in the runbooks' template — date, detection, severity, timeline, data
loss, recovery actions, follow-ups, and the RTO/RPO table — as Markdown, JSON or HTML.

Everything rendered passes through mask_text: a password in any conninfo that found
its way into a record never reaches the report.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from typing import Any

from pgdr.errors import RepositoryError
from pgdr.pg.conninfo import mask_text
from pgdr.repo.layout import Repository
from pgdr.repo.records import list_records, read_verification

SEVERITY = {"drill": "rehearsal", "failover": "SEV1", "switchover": "planned", "rejoin": "SEV3",
            "restore": "SEV2", "verify": "routine", "migrate": "change", "migrate-rollback": "SEV2"}


def find_record(repo: Repository, record_id: str) -> dict[str, Any]:
    records = [r for r in list_records(repo) if r.get("kind") != "watch"]
    if record_id == "latest":
        if not records:
            raise RepositoryError(f"no records in {repo.root / 'records'}",
                                  hint="run `pgdr drill`, `pgdr failover` or `pgdr restore` first")
        return records[-1]
    for record in records:
        if record.get("id") == record_id:
            return record
    verification = read_verification(repo, record_id)
    if verification is not None:
        return {"id": f"verify-{record_id}", "kind": "verify", **verification}
    raise RepositoryError(f"no record {record_id!r}", hint="record ids are listed by `pgdr report --list`")


def _sections(record: dict[str, Any]) -> dict[str, Any]:
    """Normalise any record kind into the template's parts."""
    kind = record.get("kind", "?")
    rows: list[dict[str, Any]] = []  # RTO/RPO table rows
    steps: list[dict[str, Any]] = []
    if kind == "drill":
        for sc in record.get("scenarios", []):
            target = sc.get("target") or {}
            rows.append({"scenario": sc["name"], "result": "pass" if sc["passed"] else "FAIL",
                         "rto_s": sc.get("rto_s"), "rto_target_s": target.get("rto_s"),
                         "rpo": sc.get("rpo"), "rpo_target": target.get("rpo"), "rpo_unit": sc.get("rpo_unit"),
                         "slowest_step": sc.get("slowest_step"), "reason": sc.get("reason"),
                         "data_bytes": sc.get("data_bytes")})
            steps += [{**s, "name": f"{sc['name']}: {s['name']}"} for s in sc.get("timeline", [])]
        outcome = "all scenarios passed" if record.get("passed") else "some scenarios FAILED"
        loss = "; ".join(f"{r['scenario']}: {r['rpo']} {r['rpo_unit']}" for r in rows if r["rpo"] is not None)
    elif kind == "verify":
        steps = [{"name": c["name"], "result": c["status"], "seconds": c.get("duration_s"),
                  "detail": c.get("summary", ""), "started_at": None} for c in record.get("checks", [])]
        rows.append({"scenario": "restore of " + str(record.get("backup_id")), "result": "pass" if record.get("passed") else "FAIL",
                     "rto_s": record.get("restore_s"), "rto_target_s": None, "rpo": None, "rpo_target": None,
                     "rpo_unit": "", "slowest_step": None, "reason": ""})
        outcome = "backup verified" if record.get("passed") else "verification FAILED"
        loss = "none (verification works on a copy)"
    else:
        steps = record.get("timeline", [])
        rpo = record.get("rpo") or {}
        rows.append({"scenario": kind, "result": record.get("outcome"), "rto_s": record.get("rto_seconds"),
                     "rto_target_s": None, "rpo": rpo.get("commits") if rpo.get("known") else None,
                     "rpo_target": None, "rpo_unit": "commits", "slowest_step": None, "reason": record.get("reason", "")})
        outcome = str(record.get("outcome"))
        loss = rpo.get("detail") or ("unknown" if rpo else "not applicable")
    started = record.get("started_at")
    when = (datetime.fromtimestamp(started, UTC).isoformat() if isinstance(started, int | float)
            else str(started or record.get("id", "")[:16]))
    detection = {"drill": "scheduled rehearsal (faults injected on purpose)",
                 "failover": f"primary {record.get('old_primary')} failed ({record.get('trigger', 'manual')} trigger)",
                 "switchover": "planned maintenance", "verify": "routine backup verification",
                 "migrate": ("rehearsal on a restored copy of " if record.get("rehearsal") else "schema migration ")
                 + f"`{record.get('command')}` (freeze point {(record.get('freeze') or {}).get('restore_point')})",
                 "migrate-rollback": f"rollback of migration {record.get('migration_id')}: "
                 f"{(record.get('plan') or {}).get('action')}"}.get(kind, kind)
    actions = [f"{s['name']}: {s.get('result')}" + (f" — {s.get('detail')}" if s.get("detail") else "") for s in steps]
    follow = []
    for r in rows:
        if r["result"] in ("FAIL", "failed", "refused"):
            follow.append(f"investigate {r['scenario']}: {r['reason']}")
        elif r["rto_target_s"] and r["rto_s"] and r["rto_s"] > 0.5 * r["rto_target_s"]:
            follow.append(f"{r['scenario']}: RTO uses over half its target; look at {r['slowest_step']}")
    if kind == "migrate":
        loss = (record.get("diff") or {}).get("summary") or loss
        if record.get("outcome") != "ok" and not record.get("rehearsal"):
            follow.append(f"roll back: pgdr migrate --rollback {record.get('id')} --dry-run")
    if kind == "migrate-rollback":
        loss = "; ".join(f"{r['table']}: {r['rows']} rows written since the freeze point"
                         for r in record.get("written_since", [])) or "none"
        if record.get("restored"):
            follow.append("salvage the rows written since the freeze point, then `pgdr cutover --to-dir "
                          f"{record['restored']['data_dir']}`")
    if kind == "failover":
        follow.append(f"rejoin {record.get('old_primary')} to restore redundancy (`pgdr rejoin {record.get('old_primary')}`)")
    return {"id": record.get("id"), "kind": kind, "date": when, "severity": SEVERITY.get(kind, "n/a"),
            "detection": detection, "outcome": outcome, "steps": steps, "rows": rows, "loss": loss,
            "actions": actions, "follow_ups": follow or ["none"]}


def _num(v: Any) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def _size(n: object) -> str:
    """The size of the data a drill scenario ran on (MB), '-' when not measured."""
    return "-" if not isinstance(n, int | float) else f"{n / 1e6:.1f} MB"


def render_markdown(record: dict[str, Any]) -> str:
    p = _sections(record)
    out = [f"# Incident record {p['id']}", "",
           f"- **Date:** {p['date']}", f"- **Kind:** {p['kind']}", f"- **Severity:** {p['severity']}",
           f"- **Detection:** {p['detection']}", f"- **Outcome:** {p['outcome']}", "",
           "## RTO / RPO", "", "| scenario | result | RTO (s) | RTO target (s) | RPO | RPO target | slowest step "
           "| data |", "|---|---|---|---|---|---|---|---|"]
    for r in p["rows"]:
        out.append(f"| {r['scenario']} | {r['result']} | {_num(r['rto_s'])} | {_num(r['rto_target_s'])} | "
                   f"{_num(r['rpo'])} {r['rpo_unit'] or ''} | {_num(r['rpo_target'])} | {r['slowest_step'] or '-'} "
                   f"| {_size(r.get('data_bytes'))} |")
    out += ["", "## Timeline", "", "| step | start | seconds | result | detail |", "|---|---|---|---|---|"]
    for s in p["steps"]:
        out.append(f"| {s['name']} | {s.get('started_at') or '-'} | {_num(s.get('seconds'))} | {s.get('result')} | "
                   f"{str(s.get('detail') or '').replace('|', '/')} |")
    out += ["", "## Data loss", "", str(p["loss"]), "", "## Recovery actions", ""]
    out += [f"1. {a}" for a in p["actions"]] or ["none"]
    out += ["", "## Follow-ups", ""] + [f"- {f}" for f in p["follow_ups"]]
    return mask_text("\n".join(out) + "\n")


def render_json(record: dict[str, Any]) -> str:
    return mask_text(json.dumps({"record": record, "report": _sections(record)}, indent=2, default=str)) + "\n"


def render_html(record: dict[str, Any]) -> str:
    p = _sections(record)
    e = html.escape
    steps = [s for s in p["steps"] if s.get("seconds") is not None]
    total = sum(float(s["seconds"]) for s in steps) or 1.0
    bar_h, width, y, x = 22, 900, 10, 0.0
    bars = []
    for s in steps:
        w = max(2.0, width * float(s["seconds"]) / total)
        color = {"ok": "#3a7", "failed": "#d33", "skipped": "#aaa"}.get(str(s.get("result")), "#58c")
        bars.append(f'<rect x="{300 + x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h - 4}" fill="{color}">'
                    f'<title>{e(s["name"])}: {float(s["seconds"]):.3f}s</title></rect>'
                    f'<text x="4" y="{y + 14}" font-size="12">{e(str(s["name"])[:45])}</text>')
        x += w
        y += bar_h
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 320}" height="{y + 10}" '
           f'role="img" aria-label="timeline">{"".join(bars)}</svg>')
    rows = "".join(f"<tr><td>{e(str(r['scenario']))}</td><td>{e(str(r['result']))}</td><td>{_num(r['rto_s'])}</td>"
                   f"<td>{_num(r['rto_target_s'])}</td><td>{_num(r['rpo'])} {e(str(r['rpo_unit'] or ''))}</td>"
                   f"<td>{_num(r['rpo_target'])}</td><td>{e(str(r['slowest_step'] or '-'))}</td>"
                   f"<td>{_size(r.get('data_bytes'))}</td></tr>" for r in p["rows"])
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>Incident record {e(str(p['id']))}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}</style>
</head><body><h1>Incident record {e(str(p['id']))}</h1>
<p><b>Date:</b> {e(p['date'])} · <b>Kind:</b> {e(p['kind'])} · <b>Severity:</b> {e(p['severity'])}</p>
<p><b>Detection:</b> {e(p['detection'])}<br><b>Outcome:</b> {e(p['outcome'])}</p>
<h2>RTO / RPO</h2><table><tr><th>scenario</th><th>result</th><th>RTO s</th><th>target</th><th>RPO</th><th>target</th><th>slowest step</th><th>data</th></tr>{rows}</table>
<h2>Timeline</h2>{svg}
<h2>Data loss</h2><p>{e(str(p['loss']))}</p>
<h2>Recovery actions</h2><ol>{''.join(f'<li>{e(a)}</li>' for a in p['actions'])}</ol>
<h2>Follow-ups</h2><ul>{''.join(f'<li>{e(f)}</li>' for f in p['follow_ups'])}</ul>
</body></html>
"""
    return mask_text(body)


RENDERERS = {"md": render_markdown, "json": render_json, "html": render_html}
