"""The dataset card: readable on the release's page, safe whatever users typed into it, and still
downloadable as README.md."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.urls import reverse

from curation.models import Dialogue, Scenario
from curation.releases.build import Filters, create_release, ensure_files
from curation.releases.card import card_html, literal

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("seeds")]

NASTY = "<script>alert(1)</script> **bold** | pipe"


@pytest.fixture(autouse=True)
def _media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


def tags_of(html: str) -> list[str]:
    parser = Tags()
    parser.feed(html)
    return parser.tags


@pytest.fixture
def nasty_release():
    """A release whose scenario, notes and licence carry HTML, Markdown and a table pipe."""
    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    scenario = Dialogue.objects.order_by("id").first().scenario
    Scenario.objects.filter(pk=scenario.pk).update(name=NASTY)
    release = create_release(
        "r-card",
        Filters(scenarios=[NASTY, "Academic Stress"]),
        notes=f"{NASTY}\n\n# a heading\n- a list\n1. ordered\n[link](javascript:alert(1))",
        licence="CC <b>BY</b>",
    )
    ensure_files(release)
    return release


def test_the_card_is_rendered_on_the_page_with_every_value_escaped(client, lead, nasty_release):
    client.force_login(lead)
    page = client.get(reverse("curation-release", args=[nasty_release.name])).content.decode()
    start = page.index('<section class="dataset-card"')
    card = page[start : page.index("</section>", start)]
    tags = tags_of(card)
    assert "table" in tags and "h3" in tags and "img" in tags  # Markdown, rendered
    assert "script" not in tags and "b" not in tags and "h1" not in tags
    assert "<script>" not in page.replace('<script src="', "")  # only the page's own scripts
    assert "&lt;script&gt;alert(1)&lt;/script&gt; **bold** | pipe" in card
    assert "<strong>bold</strong>" not in card
    assert 'href="javascript' not in card and "<li>a list" not in card
    # The scenario stays one cell of its row: the pipe did not split it.
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt; **bold** | pipe</td>" in card
    # Charts point at the release's own files.
    assert f'src="{reverse("curation-release-download", args=["r-card", "scenarios.png"])}"' in card


def test_the_card_still_downloads_as_readme(client, lead, nasty_release):
    client.force_login(lead)
    response = client.get(reverse("curation-release-download", args=["r-card", "README.md"]))
    assert response.status_code == 200
    assert 'filename="README.md"' in response["Content-Disposition"]
    assert "attachment" in response["Content-Disposition"]
    body = b"".join(response.streaming_content).decode()
    assert body.startswith("# r-card\n")
    assert "\\<script\\>alert(1)\\</script\\> \\*\\*bold\\*\\* \\| pipe" in body


def test_the_card_holds_words_and_json_never_python_reprs(nasty_release):
    card = (nasty_release.folder / "README.md").read_text()
    assert "{'" not in card and "['" not in card and "':" not in card
    assert "Split shares (stratified by scenario, by a hash of the dialogue id): train 80, " in card
    assert "- Selection: accepted dialogues of " in card
    assert "- Origins: seed " in card


def test_literal_flattens_lines_and_escapes_structure():
    assert literal("a\n\n# b\r\n- c") == "a \\# b - c"  # "-" starts a list only at the start
    assert literal("1. one") == "1\\. one" and literal("- item") == "\\- item"
    assert literal("[x](y) `code` _e_ &amp; ~s~") == "\\[x\\](y) \\`code\\` \\_e\\_ \\&amp; \\~s\\~"


def test_rendering_leaves_raw_html_as_text():
    html = card_html("# title\n\n<img src=x onerror=alert(1)>\n\n![chart](other.png)\n", {})
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "title" not in html  # the page has the title
