"""``dcvbench plot --html``: one self-contained file."""

import base64
import re

from dcvbench.cli import main


def test_html_report_is_one_self_contained_file(runs, tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["plot", str(runs), "--out", str(out), "--format", "svg", "--html", "-q"]) == 0
    printed = capsys.readouterr().out.split()
    assert str(out / "report.html") in printed
    page = (out / "report.html").read_text()
    images = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(images) == len(list(out.glob("*.svg")))  # every figure, whatever --format wrote
    prefix = "data:image/png;base64,"
    assert all(src.startswith(prefix) for src in images)
    assert base64.b64decode(images[0].removeprefix(prefix)).startswith(b"\x89PNG\r\n\x1a\n")
    references = re.findall(r'(?:href|src)="([^"]*)"', page)
    assert all(ref.startswith(("#", prefix)) for ref in references)  # nothing outside the file
    assert page.count("<table") == 3  # toy, VAE, the variance study
    for text in ("toy-separable-d8-k2", "s/step (median)", "α*", "one study, no standard error"):
        assert text in page
