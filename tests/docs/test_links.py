"""Every relative link and #anchor in README.md and docs/ leads somewhere (GitHub's rules)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.docs.markdown import DOCS, README, anchors, headings, links, pages
from tests.servers import REPO_ROOT

EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # https:, mailto: ...
# GitHub's line anchors of a source file (#L12, #L12-L20).
LINE_ANCHOR = re.compile(r"^L\d+(-L\d+)?$")


def broken_links(page: Path, root: Path = REPO_ROOT) -> list[str]:
    """`page:line: target (why)` for every relative link of `page` that leads nowhere."""
    root = root.resolve()
    problems = []
    for line, target in links(page.read_text()):
        if EXTERNAL.match(target):
            continue
        path, _, fragment = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        why = None
        if root not in (where, *where.parents):
            why = "outside the repository"
        elif not where.exists():
            why = "no such file"
        elif fragment and where.suffix == ".md":
            if fragment not in anchors(where.read_text()):
                why = f"no heading #{fragment} in {where.relative_to(root)}"
        elif fragment and not LINE_ANCHOR.match(fragment):
            why = "an anchor into a file that is not Markdown"
        if why:
            problems.append(f"{page.resolve().relative_to(root)}:{line}: {target} ({why})")
    return problems


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_every_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_pages_link_to_each_other() -> None:
    # A sanity check on the parser itself: without links found, the test above proves nothing.
    found = {target for page in pages() for _, target in links(page.read_text())}
    assert "docs/stack.md#logins-and-secrets" in found
    assert any(t.startswith("../adapter/") for t in found)


def test_every_docs_page_is_reached_from_the_readme() -> None:
    readme_targets = {t.partition("#")[0] for _, t in links(README.read_text())}
    assert {f"docs/{p.name}" for p in DOCS.glob("*.md")} <= readme_targets


def test_each_docs_page_has_one_title() -> None:
    for page in DOCS.glob("*.md"):
        titles = [h for h in headings(page.read_text()) if h.level == 1]
        assert len(titles) == 1, f"{page.name}: {[h.text for h in titles]}"


def test_readme_stays_a_front_door() -> None:
    assert len(README.read_text().splitlines()) <= 250


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("The stack (`stack.yml`)", "the-stack-stackyml"),
        ("`./run.sh`", "runsh"),
        ("Secure MQTT mode (`./run.sh --secure`)", "secure-mqtt-mode-runsh---secure"),
        (
            "Accounts, HTTP API and gateway (`auth_server/`, `kong/`)",
            "accounts-http-api-and-gateway-auth_server-kong",
        ),
        ("GitLab CI/CD (`.gitlab-ci.yml`)", "gitlab-cicd-gitlab-ciyml"),
        ("Metrics (`:8000/metrics`)", "metrics-8000metrics"),
        (
            "Grouping interval: dashboards that hold at fleet scale",
            "grouping-interval-dashboards-that-hold-at-fleet-scale",
        ),
        ("Dashboards ([`benchmarks/dashboards.py`](x.py))", "dashboards-benchmarksdashboardspy"),
        ("Größe *und* Zeit", "größe-und-zeit"),
    ],
)
def test_anchor_slugs_follow_github(heading: str, anchor: str) -> None:
    assert headings(f"# {heading}\n")[0].anchor == anchor


def test_a_repeated_heading_gets_a_numbered_anchor() -> None:
    text = "# Page\n## Troubleshooting\n```\n# not a heading\n```\n## Troubleshooting\n"
    assert [h.anchor for h in headings(text)] == ["page", "troubleshooting", "troubleshooting-1"]


@pytest.mark.parametrize(
    ("link", "problem"),
    [
        ("[x](#no-such-heading)", "no heading #no-such-heading"),
        ("[x](stack.md#no-such-heading)", "no heading #no-such-heading"),
        ("[x](no-such-page.md)", "no such file"),
        ("[x](../adapter/no_such_file.py)", "no such file"),
        ("[x](../../outside.md)", "outside the repository"),
        ("[x](../adapter/config.py#configuration)", "not Markdown"),
        ("![plot](../benchmarks/results/no_such.png)", "no such file"),
    ],
)
def test_a_broken_link_is_found(tmp_path: Path, link: str, problem: str) -> None:
    # The mutation: a copy of docs/ with one more page, one bad link among good ones.
    root = tmp_path / "repo"
    shutil.copytree(DOCS, root / "docs")
    (root / "adapter").mkdir()
    (root / "adapter" / "config.py").write_text("")
    page = root / "docs" / "mutation.md"
    page.write_text(f"# Mutation\n\n[fine](stack.md#logins-and-secrets) and {link}, `[code](nowhere.md)`.\n")
    problems = broken_links(page, root)
    assert len(problems) == 1 and problem in problems[0], problems
