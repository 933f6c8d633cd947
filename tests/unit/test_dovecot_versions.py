"""The one place that knows the Dovecot version, and the configuration writer's translation of
an operator's 2.3-style mail location into 2.4's settings (verify --doveadm takes that form on
both versions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicator.dovecot.instance_conf import MailLocationError, location_settings
from replicator.dovecot.version import DovecotVersionError, parse

V23, V24 = parse("2.3.19.1 (9b53102964)"), parse("2.4.1-4 (7d8c0e5759)")
INDEX, CONTROL = Path("/scratch/index"), Path("/scratch/control")


def test_versions_read_from_dovecot_version() -> None:
    assert (str(V23), V23.series, V23.settings_v24) == ("2.3.19", "2.3", False)
    assert (str(V24), V24.series, V24.settings_v24) == ("2.4.1", "2.4", True)
    assert V23.doveadm_without_userdb == () and V24.doveadm_without_userdb == (
        "--no-userdb-lookup",)


@pytest.mark.parametrize("text", ["", "dovecot", "2.2.36 (1f10bfa63)", "3.0.0"])
def test_unknown_versions_are_refused_by_name(text: str) -> None:
    with pytest.raises(DovecotVersionError):
        parse(text)


def test_a_2_3_location_is_kept_on_2_3_with_index_and_control_added() -> None:
    assert location_settings("maildir:/srv/mail/%u/Maildir", INDEX, CONTROL, V23) == [
        "mail_location = maildir:/srv/mail/%u/Maildir:INDEX=/scratch/index/%{user}"
        ":CONTROL=/scratch/control/%{user}"]


def test_a_2_3_location_becomes_2_4_settings_with_2_4_variables() -> None:
    assert location_settings("maildir:/srv/%d/%n/Maildir:LAYOUT=fs:INBOX=/var/mail/%u",
                             INDEX, CONTROL, V24) == [
        "mail_driver = maildir", "mail_path = /srv/%{user|domain}/%{user|username}/Maildir",
        "mailbox_list_layout = fs", "mail_inbox_path = /var/mail/%{user}",
        "mail_index_path = /scratch/index/%{user}",
        "mail_control_path = /scratch/control/%{user}"]


@pytest.mark.parametrize("location", ["/srv/mail", "maildir:", "maildir:/m:INDEX=/x",
                                      "maildir:/m:UNKNOWN=1"])
def test_locations_the_writer_cannot_express_are_refused(location: str) -> None:
    with pytest.raises(MailLocationError):
        location_settings(location, INDEX, CONTROL, V24)
