"""The documentation: a short README, links that resolve, and a finding catalog page that matches the catalog."""
import re
import subprocess
import sys
from pathlib import Path

from bncheck.catalog import CATALOG, Entry
from bncheck.catalog_doc import COMMAND, knob_settings, render

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CATALOG_PAGE = DOCS / "catalog.md"
README_MAX_LINES = 160


def _pages():
    return [README, *sorted(DOCS.glob("*.md"))]


def _catalog_cli(*args):
    return subprocess.run([sys.executable, "-m", "bncheck", "catalog", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_catalog_page_is_current():
    r = _catalog_cli()
    assert r.returncode == 0, r.stderr
    assert CATALOG_PAGE.is_file(), f"docs/catalog.md is missing: run `make docs` ({COMMAND})"
    assert CATALOG_PAGE.read_text(encoding="utf-8") == r.stdout, (
        f"docs/catalog.md differs from what bncheck/catalog.py gives now: regenerate it with `make docs` ({COMMAND})")


def test_catalog_command_writes_the_page(tmp_path):
    out = tmp_path / "sub" / "catalog.md"
    r = _catalog_cli("--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_text(encoding="utf-8") == render()
    assert _catalog_cli("--out", "-").stdout == render()
    r = _catalog_cli("--out", str(tmp_path))
    assert r.returncode == 2 and "a directory" in r.stderr


def test_catalog_page_has_every_id_under_its_kind_with_its_knobs():
    page = render()
    sections = re.split(r"^## ", page, flags=re.M)[1:]
    titles = [s.splitlines()[0] for s in sections]
    assert titles == ["BatchNorm", "Fusion (conv-BN folding)", "Synchronised BatchNorm (distributed)"]
    for e in CATALOG.values():
        (section,) = [s for s in sections if f"Kind `{e.kind}`" in s]
        (row,) = [line for line in section.splitlines() if line.startswith(f"| `{e.id}` |")]
        assert e.meaning.replace("|", "\\|") in row
        for alt in e.knobs:
            assert ", ".join(f"{k}={v if isinstance(v, str) else repr(v)}" for k, v in alt.items()) in row
    assert knob_settings(CATALOG["inverted-momentum"]) == "`momentum_direction=inverted`"
    assert knob_settings(CATALOG["crash"]) == "-"
    assert knob_settings(CATALOG["stats-not-updated"]) == \
        "`update_stats=False` or `update_stats=False, count_frozen=True`"


def test_catalog_page_renders_a_new_kind_and_escapes_pipes():
    page = render([Entry("a-bug", "x | y"), Entry("other-bug", "z", kind="other", knobs=({"k": 1},))])
    assert "## BatchNorm" in page and "## other" in page and "2 ids: 1 batchnorm, 1 other." in page
    assert "| `a-bug` | x \\| y | - |" in page and "| `other-bug` | z | `k=1` |" in page


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move detail to docs/"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped, spaces as '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen, anchors = {}, set()
    for line in _strip_code(path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = _slug(m.group(1))
            anchors.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return anchors


def _strip_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _links(path: Path):
    text = _strip_code(path.read_text(encoding="utf-8"))
    for m in re.finditer(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text):
        yield m.group(1)


def test_relative_links_point_to_existing_files():
    broken = []
    for page in _pages():
        for target in _links(page):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):       # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            where = f"{page.relative_to(ROOT)}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{where}: no heading with anchor #{anchor}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in _links(README)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"docs pages not linked from README.md: {missing}"
