"""A day of ordinary use by several people behind one address bans nobody (docs/security.md, "What weighs").

An office behind one NAT address: people mistype passwords and then get them
right, click what their role does not allow, keep a tab open after signing
out everywhere else or changing their password, let a session expire over
lunch, try the API by hand, test the account lock on purpose, log out and in
again. None of it is an attack on the origin, and the abuse window (600 s)
sees each burst of it whole. The attacks of test_abuse.py and
test_hardening.py still ban.
"""

from __future__ import annotations

import pytest
from auth_helpers import PASSWORD, assert_error, auth_of, cheap_hash, login_body, send, sign

from kernel import AccountLocked, ExpiredSession, Forbidden, InvalidCredential, UnknownSession

OFFICE = "203.0.113.7"
PEOPLE = ("alice", "bob", "carol", "dave")
NEW = "a brand new passphrase"


@pytest.fixture
def office(auth_app):
    return auth_app(users={f"{name}@localhost": cheap_hash(PASSWORD) for name in PEOPLE if name != "alice"})


def test_a_day_of_ordinary_use_behind_one_address_bans_nobody(office, client_for, fake_clock):
    auth = auth_of(office)

    def tab(name, password=PASSWORD):
        client = client_for(remote_addr=OFFICE, target=office)
        client.login(name, password)
        return client

    def typo(name, password="correct horse"):
        assert_error(send(office, "/auth/login", login_body(name, password), remote_addr=OFFICE), 401,
                     "InvalidCredential")

    def banned() -> bool:
        return auth.abuse.banned_until("localhost", OFFICE, auth.clock()) is not None

    def later(minutes: float):
        assert not banned()
        fake_clock.advance(minutes * 60)
        assert not banned()

    # 08:55 to 09:10: everyone arrives; two typos, a password typed into a username field, then the right ones.
    typo("alice")
    alice = tab("alice")
    later(1)
    typo("bob")
    typo("bob", "correct horse battery!")
    bob = tab("bob")
    typo("correct horse battery", "carol")
    carol, carol_second_tab = tab("carol"), tab("carol")
    dave = tab("dave")
    later(2)
    # Clicks on what one's role does not allow, now and then, by several people.
    for person, clicks in ((carol, 4), (bob, 3), (alice, 2)):
        for _ in range(clicks):
            with pytest.raises(Forbidden):
                person.call("secret_report")
    later(1)
    # Carol signs out everywhere else; her other tab's next click is refused, and the tab goes to the login
    # (so does a second request of that tab, already on its way when the first was refused).
    assert carol.call("end_sessions") == 1
    ended = carol_second_tab.session
    with pytest.raises(UnknownSession):
        carol_second_tab.call("echo", "x")
    carol_second_tab.session = ended
    assert_error(send(office, "/api/echo", b"", sign(carol_second_tab, "/api/echo", b"")[0], remote_addr=OFFICE),
                 401, "UnknownSession")
    later(1)
    # Dave tries the API by hand, without signing: twice.
    for _ in range(2):
        assert_error(send(office, "/api/echo", b"", remote_addr=OFFICE), 401, "Unauthorized")
    # Alice changes her password: a wrong current one first; her phone's session ends with the change.
    alice_phone = tab("alice")
    with pytest.raises(InvalidCredential):
        alice.call("change_password", "correct horse", NEW)
    assert alice.call("change_password", PASSWORD, NEW) is True
    with pytest.raises(UnknownSession):
        alice_phone.call("echo", "x")
    later(1)
    # Dave tests the account lock on purpose: five wrong passwords, then the right one, refused.
    for _ in range(4):
        typo("dave", "not my password")
    assert_error(send(office, "/auth/login", login_body("dave", "not my password"), remote_addr=OFFICE), 429,
                 "AccountLocked")  # the fifth locks the account, and says so
    with pytest.raises(AccountLocked):
        tab("dave")
    assert dave.call("echo", "still signed in")["user"] == "dave"  # a lock ends no session
    later(6)

    # 12:00: lunch. Bob logs out; Carol's session expires while she is away; Alice keeps working.
    bob.logout()
    for _ in range(2):
        later(20)
        assert alice.call("echo", "working through lunch")["user"] == "alice"
    with pytest.raises(ExpiredSession):
        carol.call("echo", "after lunch")
    # 13:00: back, a typo or two before the right password, and the morning's slips again.
    typo("bob")
    bob = tab("bob")
    typo("carol", "lunch")
    carol = tab("carol")
    for person in (bob, carol):
        for _ in range(3):
            with pytest.raises(Forbidden):
                person.call("secret_report")
    alice_phone = tab("alice", NEW)
    assert alice_phone.call("end_sessions") == 1
    with pytest.raises(UnknownSession):
        alice.call("echo", "x")
    alice = tab("alice", NEW)
    dave = tab("dave", PASSWORD)  # the lock is over
    for _ in range(9):  # the afternoon's work
        later(25)
        for person in (alice, alice_phone, bob, carol, dave):
            person.call("echo", "work")

    # 17:00: everyone logs out.
    for person in (alice, alice_phone, bob, carol, dave):
        person.logout()
    assert not banned()
    for name in PEOPLE:
        assert tab(name, NEW if name == "alice" else PASSWORD).call("echo", "x")["user"] == name


def test_the_same_address_is_still_banned_for_guessing(office):
    """Ten wrong passwords for other people's accounts from the office address: a ban, whoever is behind it."""
    for i in range(10):
        send(office, "/auth/login", login_body(PEOPLE[i % 4], f"guess {i}"), remote_addr=OFFICE)
    assert_error(send(office, "/auth/login", login_body("bob"), remote_addr=OFFICE), 429, "Abusive")


def test_a_stolen_sid_without_its_key_is_still_banned(office, client_for):
    """A live session's sid signed with a wrong key: InvalidSignature weighs 3, valid session or not."""
    bob = client_for(remote_addr="198.51.100.9", target=office)
    bob.login("bob", PASSWORD)
    key = bob.session.key
    bob.session.key = bytes(32)
    for _ in range(4):
        headers, _ = sign(bob, "/api/echo", b"")
        assert_error(send(office, "/api/echo", b"", headers, remote_addr=OFFICE), 401, "InvalidSignature")
    bob.session.key = key
    assert_error(send(office, "/api/echo", b"", sign(bob, "/api/echo", b"")[0], remote_addr=OFFICE), 429,
                 "Abusive")
