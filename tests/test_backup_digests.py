"""File digests across pgdr.json formats: backups written before BLAKE3 (format 1, sha256)
keep listing, verifying and catching damage; a format this pgdr does not know is refused
by name, never misread. Real backups of a real sandbox; the older format is rebuilt the
way the older pgdr wrote it (sha256 of each file, the seal over the canonical JSON),
computed here with hashlib, independently of pgdr's code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pgdr.sandbox import sandbox as sb
from tests.conftest import run_cli


def seal(doc: dict) -> str:  # type: ignore[type-arg]
    """pgdr.json's manifest_sha256 as every pgdr has computed it."""
    body = {k: v for k, v in doc.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=True).encode()).hexdigest()


def _as_written_before_blake3(folder: Path) -> None:
    doc = json.loads((folder / "pgdr.json").read_text())
    assert doc["format"] == 2 and all(set(e) == {"size", "blake3"} for e in doc["files"].values())
    doc["format"] = 1
    doc["files"] = {name: {"size": e["size"], "sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest()}
                    for name, e in doc["files"].items()}
    doc["manifest_sha256"] = seal(doc)
    (folder / "pgdr.json").write_text(json.dumps(doc, indent=2))


def _flip(path: Path) -> None:
    body = bytearray(path.read_bytes())
    body[len(body) // 2] ^= 0x01
    path.write_bytes(bytes(body))


def _backup(sandbox: sb.Sandbox) -> Path:
    done = run_cli("backup", "--json", config=sandbox.config_path)
    assert done.returncode == 0, done.stderr
    return sandbox.repo.backups_dir / json.loads(done.stdout)["id"]


def test_a_sha256_backup_from_before_blake3_verifies_and_its_damage_is_caught(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("digests", standbys=0)
    folder = _backup(sandbox)
    _as_written_before_blake3(folder)

    listed = run_cli("list", "--json", config=sandbox.config_path)
    assert listed.returncode == 0, listed.stderr
    assert folder.name in {r["id"] for r in json.loads(listed.stdout)}
    good = run_cli("verify", folder.name, "--json", config=sandbox.config_path)
    assert good.returncode == 0, good.stdout[-2000:] + good.stderr
    files = next(c for c in json.loads(good.stdout)["checks"] if c["name"] == "files")
    assert files["status"] == "ok" and "sha256" in files["summary"], files

    tar = next(folder.glob("base.tar*"))
    _flip(tar)
    bad = run_cli("verify", folder.name, config=sandbox.config_path)
    assert bad.returncode == 1, bad.stderr
    assert tar.name in bad.stderr and "sha256" in bad.stderr and "does not match" in bad.stderr
    assert "Traceback" not in bad.stderr
    target = sandbox.root / "restored-old"
    # --force: past the failed verify.json, so the extraction itself must catch it
    restore = run_cli("restore", "--backup", folder.name, "--target-dir", str(target), "--immediate", "--force",
                      config=sandbox.config_path)
    assert restore.returncode == 1, restore.stdout + restore.stderr
    assert tar.name in restore.stderr and not target.exists()


def test_a_pgdr_json_from_a_newer_pgdr_is_refused_by_name(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("digests2", standbys=0)
    folder = _backup(sandbox)
    doc = json.loads((folder / "pgdr.json").read_text())
    doc["format"] = 3
    doc["manifest_sha256"] = seal(doc)
    (folder / "pgdr.json").write_text(json.dumps(doc))

    listed = run_cli("list", "--json", config=sandbox.config_path)
    entry = next(r for r in json.loads(listed.stdout) if r["id"] == folder.name)
    assert entry["verified"] == "damaged" and "newer pgdr" in entry["problem"], entry
    verify = run_cli("verify", folder.name, config=sandbox.config_path)
    assert verify.returncode != 0
    assert "format 3" in verify.stderr and "newer pgdr" in verify.stderr, verify.stderr
    assert "Traceback" not in verify.stderr
