"""What the web UI's tests do with a page: log in, add a todo, find the items (imported by the test modules)."""

from __future__ import annotations

from kernel.testing import import_or_skip

PASSWORD = "correct horse battery"


def expect(target):
    """Playwright's retrying assertions on a locator or a page."""
    return import_or_skip("playwright.sync_api").expect(target)


def login(page, username="alice", password=PASSWORD):
    """Sign in through the login form, as a person does."""
    page.fill("form#login input[name=username]", username)
    page.fill("form#login input[name=password]", password)
    page.click("form#login button[type=submit]")


def add(page, text):
    """Type a new todo and press Enter."""
    page.fill("input.new-todo", text)
    page.press("input.new-todo", "Enter")


def items(page):
    """The todo list's items."""
    return page.locator("ul.todo-list li")
