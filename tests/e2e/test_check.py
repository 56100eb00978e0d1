"""`mailrouter check --connect` against the real stack: every mailbox's login, the relay's
(STARTTLS and AUTH on the submission port) and the database, each failure named by its key."""

from __future__ import annotations


def test_check_connect_logs_in_everywhere_and_names_each_login_that_fails(installation, mailstack):
    relay_user, relay_password = mailstack.new_account("relay")
    daemon = installation(
        smtp={
            "port": mailstack.submission_port,
            "security": "starttls",
            "ca_file": str(mailstack.ca_file),
            "username": relay_user,
            "password_env": "E2E_SMTP_PASSWORD",
        }
    )
    daemon.env["E2E_SMTP_PASSWORD"] = relay_password

    good = daemon.cli("check", "--connect")
    assert good.returncode == 0, good.stderr
    assert "ok — 3 mailbox(es)" in good.stdout and "logins, relay and database checked" in good.stdout

    daemon.env["E2E_HR_PASSWORD"] = "not-the-hr-password"
    daemon.env["E2E_SMTP_PASSWORD"] = "not-the-relay-password"
    bad = daemon.cli("check", "--connect")
    assert bad.returncode == 1
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error: ")]
    hr = daemon.mailboxes["hr"].address
    assert len(errors) == 2, bad.stderr
    assert f"mailboxes.hr.imap: cannot log in to 127.0.0.1:{mailstack.imap_port} as {hr}" in errors[0]
    assert "AUTHENTICATIONFAILED" in errors[0]
    assert f"smtp: relay 127.0.0.1:{mailstack.submission_port} as {relay_user}" in errors[1]
    assert "535" in errors[1]
    assert "not-the-" not in bad.stderr + bad.stdout
