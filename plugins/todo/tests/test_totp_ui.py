"""Two-step sign-in in the web UI, in Chromium against gunicorn: enrol from the account panel, sign out, sign in
with the password and then a code.

The server runs on the wall clock: the confirming code is the current step's and the sign-in's the next
step's, accepted within the window whichever side of a step boundary the server reads its clock, and never
the confirming one. Nothing sleeps or asserts on timing.
"""

from __future__ import annotations

import time

import pyotp
import pytest
from ui_helpers import PASSWORD, expect, login

from kernel import UnknownSession
from kernel.testing import Client

pytestmark = pytest.mark.slow


def test_a_user_turns_on_two_step_sign_in_and_signs_in_with_a_code(todo_server, page, page_errors):
    port = todo_server()
    page_errors.expected_statuses = {401}  # the sign-in without a code is answered 401 SecondFactorRequired
    page.goto(f"http://localhost:{port}/")
    with page.expect_response("**/api/get_all"):
        login(page)
    expect(page.locator("input.new-todo")).to_be_visible()

    # Turn it on from the account panel: the QR code and the key, confirmed by a first code.
    page.click("button.account-open")
    expect(page.locator(".two-step-state")).to_contain_text("Off")
    page.click("button.two-step-begin")
    expect(page.locator("img.two-step-qr")).to_be_visible()
    assert page.locator("img.two-step-qr").get_attribute("src").startswith("data:image/svg+xml")
    secret = page.locator(".two-step-secret").inner_text().strip()
    assert len(secret) == 32
    page.fill("#two-step-code", pyotp.TOTP(secret).at(time.time()))
    page.click(".two-step-enrol button[type=submit]")
    # The recovery codes, shown once.
    expect(page.locator(".two-step-code-list li")).to_have_count(10)
    expect(page.locator(".two-step-state")).to_contain_text("On")
    recovery = page.locator(".two-step-code-list li").first.inner_text().strip()
    assert len(recovery) == 19

    # Sign out; the password alone now asks for a code.
    page.click("button.account-close")
    page.click("button.logout")
    expect(page.locator("form#login")).to_be_visible()
    expect(page.locator("#login .login-code")).to_be_hidden()
    login(page)
    expect(page.locator("#login .login-code")).to_be_visible()
    expect(page.get_by_role("alert")).to_have_text("Enter the code your authenticator app shows (or a recovery code).")
    expect(page.locator("#login-code")).to_be_focused()
    # The code, with the password still in its field: signed in.
    page.fill("#login-code", pyotp.TOTP(secret).at(time.time() + 30))
    with page.expect_response("**/api/get_all"):
        page.click("form#login button[type=submit]")
    expect(page.locator("input.new-todo")).to_be_visible()
    expect(page.locator("#login .login-code")).to_be_hidden()

    # A recovery code signs in too, once.
    page.click("button.logout")
    login(page)
    expect(page.locator("#login .login-code")).to_be_visible()
    page.fill("#login-code", recovery)
    with page.expect_response("**/api/get_all"):
        page.click("form#login button[type=submit]")
    expect(page.locator("input.new-todo")).to_be_visible()
    page.click("button.account-open")
    expect(page.locator(".two-step-state")).to_contain_text("9 recovery codes left")


def test_where_two_step_sign_in_is_required_a_user_without_it_is_taken_to_enrol(todo_server, page, page_errors):
    """[auth] second_factor = required: the login answers "second_factor": "enrol", and the page opens the account
    panel and says why instead of loading a list the server would refuse; once enrolled, the todos load."""
    port = todo_server(second_factor="required")
    page.goto(f"http://localhost:{port}/")
    login(page)
    expect(page.locator(".two-step-state")).to_contain_text("Off")
    expect(page.get_by_role("alert")).to_have_text("This site asks you to turn on two-step sign-in before anything else.")
    assert page.evaluate("() => Bastion.session().second_factor") == "enrol"
    page.click("button.two-step-begin")
    expect(page.locator("img.two-step-qr")).to_be_visible()
    secret = page.locator(".two-step-secret").inner_text().strip()
    page.fill("#two-step-code", pyotp.TOTP(secret).at(time.time()))
    page.click(".two-step-enrol button[type=submit]")
    expect(page.locator(".two-step-code-list li")).to_have_count(10)
    with page.expect_response("**/api/get_all"):
        page.click("button.account-close")
    expect(page.locator("input.new-todo")).to_be_visible()


def test_a_user_at_the_session_limit_signs_in_with_force_and_the_same_code(todo_gunicorn, page, page_errors):
    """max_active_sessions = 1, a user with two-step sign-in signed in elsewhere: the password and a code answer
    409 MaxActiveSessions without using the code up, the page keeps both and offers "Sign out my other sessions",
    and ticking it signs in with the same code; the other session has ended."""
    server = todo_gunicorn(max_active_sessions=1)
    page_errors.expected_statuses = {401, 409}
    elsewhere = Client(server.url, host="localhost")
    elsewhere.login("alice", PASSWORD)
    secret = elsewhere.call("totp_begin")["secret"]
    elsewhere.call("totp_confirm", pyotp.TOTP(secret).at(time.time()))  # alice's one session stays open

    page.goto(f"http://localhost:{server.port}/")
    login(page)
    expect(page.locator("#login .login-code")).to_be_visible()
    page.fill("#login-code", pyotp.TOTP(secret).at(time.time() + 30))
    page.click("form#login button[type=submit]")
    expect(page.get_by_role("alert")).to_have_text(
        "You are already signed in on too many devices. Tick “Sign out my other sessions” to sign in here.")
    expect(page.locator("#login-force")).to_be_focused()
    expect(page.locator("#login-code")).not_to_have_value("")
    page.check("#login-force")
    with page.expect_response("**/api/get_all"):
        page.click("form#login button[type=submit]")
    expect(page.locator("input.new-todo")).to_be_visible()
    with pytest.raises(UnknownSession):
        elsewhere.call("totp_status")
