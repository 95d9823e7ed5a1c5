"""alertmanager/alertmanager.yml, and what run.sh makes of it for each receiver setting:
checked by `amtool check-config` (Debian's Alertmanager 0.25, which the tests run)."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.alertmanager.rendered import RenderError, load, operators, render
from tests.servers import REPO_ROOT, require_binary

SHIPPED = REPO_ROOT / "alertmanager" / "alertmanager.yml"
WEBHOOK = {"ALERT_WEBHOOK_URL": "https://hooks.example.org/services/T0/B1/x?token=a'b&c=d"}
EMAIL = {
    "ALERT_EMAIL_TO": "ops@example.org",
    "ALERT_EMAIL_FROM": "iot-alerts@example.org",
    "ALERT_SMTP_HOST": "smtp.example.org:587",
}
EMAIL_AUTH = {**EMAIL, "ALERT_SMTP_USERNAME": "iot", "ALERT_SMTP_PASSWORD": 'p\'ss: #"word" {{x}}'}


def amtool_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("amtool"), "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_amtool_accepts_the_shipped_config() -> None:
    result = amtool_check(SHIPPED)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 receivers" in result.stdout


def test_shipped_config_routes_everything_to_a_receiver_without_integrations() -> None:
    config = yaml.safe_load(SHIPPED.read_text())
    assert config["route"]["receiver"] == "operators"
    assert {r["receiver"] for r in config["route"]["routes"]} == {"operators"}
    assert operators(config) == {"name": "operators"}
    # run.sh appends to the last receiver: it must be `operators`.
    assert config["receivers"][-1]["name"] == "operators"


@pytest.mark.parametrize(
    ("settings", "integrations"),
    [
        ({}, set()),
        (WEBHOOK, {"webhook_configs"}),
        (EMAIL, {"email_configs"}),
        (EMAIL_AUTH, {"email_configs"}),
        ({**WEBHOOK, **EMAIL_AUTH}, {"webhook_configs", "email_configs"}),
    ],
    ids=["none", "webhook", "email", "email-with-login", "both"],
)
def test_run_sh_renders_a_valid_config_with_the_receivers_asked_for(
    tmp_path: Path, settings: dict[str, str], integrations: set[str]
) -> None:
    path, printed = render(tmp_path, **settings)
    result = amtool_check(path)
    assert result.returncode == 0, result.stdout + result.stderr + path.read_text()
    receiver = operators(load(path))
    assert set(receiver) - {"name"} == integrations
    if "webhook_configs" in integrations:
        assert receiver["webhook_configs"] == [{"url": WEBHOOK["ALERT_WEBHOOK_URL"], "send_resolved": True}]
    if "email_configs" in integrations:
        (email,) = receiver["email_configs"]
        assert email["to"] == settings["ALERT_EMAIL_TO"] and email["smarthost"] == settings["ALERT_SMTP_HOST"]
        assert email.get("auth_password") == settings.get("ALERT_SMTP_PASSWORD")
    # Everything before the receivers' integrations is the shipped file, unchanged.
    assert path.read_text().startswith(SHIPPED.read_text())
    # It may hold a token or a password: readable by its owner only.
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ("sent nowhere" in printed) == (not integrations)


def test_settings_are_remembered_and_removed_by_an_empty_value(tmp_path: Path) -> None:
    render(tmp_path, **WEBHOOK)
    again, _ = render(tmp_path)  # a later ./run.sh without the variable keeps the webhook
    assert "webhook_configs" in operators(load(again))
    removed, printed = render(tmp_path, ALERT_WEBHOOK_URL="")
    assert operators(load(removed)) == {"name": "operators"}
    assert "sent nowhere" in printed


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ALERT_WEBHOOK_URL": "hooks.example.org/x"}, "must be an http:// or https:// URL"),
        ({"ALERT_WEBHOOK_URL": "https://a.example/x y"}, "must be an http:// or https:// URL"),
        (
            {"ALERT_EMAIL_TO": "ops@example.org"},
            "e-mail alerts need IOT_ALERT_EMAIL_TO, IOT_ALERT_EMAIL_FROM",
        ),
        ({**EMAIL, "ALERT_SMTP_HOST": "smtp.example.org"}, "IOT_ALERT_SMTP_HOST must be host:port"),
        ({**EMAIL_AUTH, "ALERT_SMTP_PASSWORD": "two\nlines"}, "alert settings must be one line"),
        ({**EMAIL, "ALERT_SMTP_PASSWORD": "secret"}, "IOT_ALERT_SMTP_PASSWORD needs IOT_ALERT_SMTP_USERNAME"),
    ],
)
def test_run_sh_refuses_incomplete_or_malformed_settings(
    tmp_path: Path, settings: dict[str, str], message: str
) -> None:
    with pytest.raises(RenderError, match=message.replace("(", r"\(").replace(")", r"\)")):
        render(tmp_path, **settings)
