"""Leadership by a lock on a file: one leader, even when the file is removed."""

from __future__ import annotations

from pathlib import Path

from infrastructure.leadership import FileLeadership


def test_one_process_leads_while_it_holds_the_lock(tmp_path: Path) -> None:
    first, second = FileLeadership(tmp_path / "lock"), FileLeadership(tmp_path / "lock")
    assert first.acquire() and first.holds()
    assert not second.acquire()
    first.release()
    assert second.acquire()
    second.release()


def test_a_removed_lock_file_ends_the_leadership_it_held(tmp_path: Path) -> None:
    # Without the check, a second process locks a new file at the path and both lead.
    path = tmp_path / "lock"
    first, second = FileLeadership(path), FileLeadership(path)
    assert first.acquire()
    path.unlink()
    assert not first.holds()
    assert second.acquire() and second.holds()
    assert not first.acquire()
    second.release()


def test_a_lock_file_replaced_under_an_acquire_is_not_led(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    leader = FileLeadership(path)
    assert leader.acquire()
    replaced = tmp_path / "other"
    replaced.write_bytes(b"")
    replaced.replace(path)
    assert not leader.holds()
    assert leader.acquire() and leader.holds()  # on the file now at the path
    leader.release()
