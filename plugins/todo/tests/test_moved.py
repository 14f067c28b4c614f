"""A tenant copied to another store (``bastion copy --verify``) serves the web UI there: same todos, ids and versions,
and a user the copy brought logs in with the password they had."""

from __future__ import annotations

import io

from ui_helpers import add, expect, items, login

from kernel.testing import Client, import_or_skip, main

PASSWORD = "dave's own password, never in any [users]"


def _ini(tmp_path, name: str, storage: str) -> str:
    path = tmp_path / f"{name}.ini"
    path.write_text(f"[bastion]\ndevelopment = true\nstorage = {storage}\n")
    return str(path)


def test_a_tenant_copied_to_another_store_serves_the_web_ui_with_its_ids_versions_and_passwords(
        todo_server, page, tmp_path, monkeypatch, capsys):
    import_or_skip("bastion_storage_sql", "the SQL storage plugin is not installed")
    source, target = f"sqlite:///{tmp_path / 'source.sqlite3'}", f"sqlite:///{tmp_path / 'target.sqlite3'}"
    port = todo_server(storage=source)
    # A user only the source knows, with a password of their own (the target's [users] does not name them).
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["--config", _ini(tmp_path, "source", source), "adduser", "dave", "--domain", "localhost",
                 "--password-stdin"]) == 0
    dave = Client(f"http://127.0.0.1:{port}", host="localhost")
    dave.login("dave", PASSWORD)
    milk = dave.call("add", "Buy oat milk — ½ litre")
    bread = dave.call("add", "Bake bread")
    bread = dave.call("update", bread["id"], bread["vsn"], done=True)
    before = dave.call("get_all")
    assert [todo["vsn"] for todo in before] == [1, 2]

    capsys.readouterr()
    assert main(["--config", _ini(tmp_path, "target", target), "copy", "--from", source, "--to", target,
                 "--tenant", "localhost", "--verify"]) == 0, capsys.readouterr()
    assert "verified 1 tenant" in capsys.readouterr().out

    moved = todo_server(storage=target)
    again = Client(f"http://127.0.0.1:{moved}", host="localhost")
    again.login("dave", PASSWORD)
    assert again.call("get_all") == before  # the same ids, versions, texts and states

    page.goto(f"http://localhost:{moved}/")
    login(page, "dave", PASSWORD)
    expect(items(page)).to_have_count(2)
    expect(items(page).nth(0).locator("label")).to_have_text(milk["text"])
    expect(items(page).nth(1)).to_have_class("completed")
    items(page).nth(0).locator("input.toggle").check()  # an update from the version the copy kept
    expect(items(page).nth(0)).to_have_class("completed")
    add(page, "Written after the move")
    expect(items(page)).to_have_count(3)
    after = {todo["id"]: todo for todo in again.call("get_all")}
    assert after[milk["id"]]["vsn"] == 2 and after[milk["id"]]["done"] is True
    assert after[bread["id"]] == bread
