""".gitlab-ci.yml: lint → test (the one test command) → build and push → manual deploy."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.servers import REPO_ROOT


@pytest.fixture(scope="module")
def ci() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / ".gitlab-ci.yml").read_text())


def jobs(ci: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: job for name, job in ci.items() if isinstance(job, dict) and "stage" in job}


def test_stages_run_in_order(ci: dict[str, Any]) -> None:
    assert ci["stages"] == ["lint", "test", "build", "deploy"]
    assert {job["stage"] for job in jobs(ci).values()} == set(ci["stages"])


def test_test_job_runs_the_test_command(ci: dict[str, Any]) -> None:
    script = jobs(ci)["test"]["script"]
    assert any(line.startswith("./test.sh") for line in script)


def test_lint_uses_the_pinned_ruff_and_shellcheck(ci: dict[str, Any]) -> None:
    lint = jobs(ci)["lint"]
    text = "\n".join(lint["before_script"] + lint["script"])
    assert "requirements-dev.txt" in text
    assert "ruff check ." in text and "ruff format --check ." in text and "shellcheck" in text


def test_build_pushes_the_images_deploy_uses(ci: dict[str, Any]) -> None:
    build = jobs(ci)["build"]
    script = "\n".join(build["script"])
    for variable in ("ADAPTER_IMAGE", "AUTH_SERVER_IMAGE"):
        # run.sh deploys these variables' images instead of building its own.
        assert ci["variables"][variable].endswith(":$CI_COMMIT_SHORT_SHA")
        assert f'docker push "${variable}"' in script


def test_deploy_is_manual_from_the_default_branch_only(ci: dict[str, Any]) -> None:
    deploy = jobs(ci)["deploy"]
    assert deploy["rules"] == [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH", "when": "manual"}]
    assert any(line.startswith("./run.sh") for line in deploy["script"])


def test_no_job_image_is_latest(ci: dict[str, Any]) -> None:
    for name, job in {**jobs(ci), ".docker": ci[".docker"]}.items():
        image = job.get("image")
        if image:
            assert ":" in image and not image.endswith(":latest"), name
