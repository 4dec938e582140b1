"""The HTML pages of reports, comparisons and the study: tables, images and one page layout.

A page is a list of `(heading, html)` sections written next to its images, which are
linked by file name. The pages of `fashion_keras.report`, `fashion_keras.compare` and
`fashion_keras.study` are built from these pieces.

Example:
    >>> write_page("out/index.html", "My page", [("Runs", table_html(frame)),
    ...                                           ("Curves", image("curves.png", "curves"))])
"""

import html

from fashion_keras import files

# Short column names for the uncertainty tables of the pages.
SHORT_NAMES = {
    "negative_log_likelihood": "NLL",
    "brier_score": "Brier",
    "expected_calibration_error": "ECE",
    "error_auroc_entropy": "error AUROC (entropy)",
    "error_auroc_mutual_information": "error AUROC (MI)",
    "auroc_entropy": "AUROC (entropy)",
    "auroc_mutual_information": "AUROC (MI)",
}


def table_html(frame, float_format="{:.4f}".format):
    """A DataFrame as an HTML table in the pages' style (floats to 4 places, NaN as "–")."""
    return frame.to_html(float_format=float_format, border=0, classes="table", na_rep="–")


def image(name, alt):
    """An `<img>` of the file `name` beside the page, with its `alt` text escaped."""
    return f'<img src="{name}" alt="{html.escape(alt)}">'


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
img {{ max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }}
.table {{ border-collapse: collapse; font-size: 0.9em; }}
.table td, .table th {{ padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head>
<body>
<h1>{title}</h1>
{body}
<script>
// Marks images that failed to load, so a broken page says so.
window.addEventListener("load", () => {{
  const imgs = [...document.images];
  const ok = imgs.filter((i) => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.images = ok + "/" + imgs.length;
}});
</script>
</body></html>
"""


def write_page(path, title, sections):
    """Writes an HTML page of `(heading, html)` sections next to its images."""
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" for h, content in sections)
    files.write_text(path, PAGE.format(title=html.escape(title), body=body))
