"""The report's document model (`Doc`: headings, paragraphs, bullets, tables, figures) and its
typesetting, to Markdown and to PDF.

The PDF is set with fpdf2: text flows and wraps, tables are real tables whose cells wrap and
which break across pages (the header row repeats), figures are embedded as PNG images scaled to
the text width. The analysis (utils/analysis/) only fills a `Doc`; nothing here knows what a
section says, and nothing there knows how it is set.
"""
import io
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
from fpdf import FPDF
from fpdf.fonts import FontFace


@dataclass
class Table:
    name: str
    caption: str
    columns: list
    rows: list  # lists of already-formatted strings


@dataclass
class Doc:
    blocks: list = field(default_factory=list)

    def h1(self, text):
        self.blocks.append(("h1", text))

    def h2(self, text):
        self.blocks.append(("h2", text))

    def h3(self, text):
        self.blocks.append(("h3", text))

    def p(self, text):
        self.blocks.append(("p", text))

    def bullets(self, items):
        if items:
            self.blocks.append(("bullets", list(items)))

    def table(self, table):
        self.blocks.append(("table", table))

    def figure(self, name):
        self.blocks.append(("figure", name))

    def page_break(self):
        self.blocks.append(("page", None))

    @property
    def tables(self):
        return {b[1].name: b[1] for b in self.blocks if b[0] == "table"}


# ---- Markdown ------------------------------------------------------------------------------

def to_markdown(doc, skipped):
    """The document as Markdown; `skipped` = {figure name: the line saying why it is missing}."""
    out = []
    for kind, x in doc.blocks:
        if kind == "h1":
            out.append(f"# {x}\n")
        elif kind == "h2":
            out.append(f"## {x}\n")
        elif kind == "h3":
            out.append(f"### {x}\n")
        elif kind == "p":
            out.append(f"{x}\n")
        elif kind == "bullets":
            out.append("\n".join(f"- {b}" for b in x) + "\n")
        elif kind == "table":
            out.append(f"Table ({x.name}): {x.caption}\n")
            out.append("| " + " | ".join(x.columns) + " |")
            out.append("|" + "---|" * len(x.columns))
            out.extend("| " + " | ".join(r) + " |" for r in x.rows)
            out.append("")
        elif kind == "figure":
            out.append(f"Figure: {skipped[x]}\n" if x in skipped else f"Figure: plots/{x}.png\n")
    return "\n".join(out)


# ---- PDF -----------------------------------------------------------------------------------

# DejaVu ships with matplotlib (already a dependency) and covers the Greek letters and symbols
# the text uses (γ, ε, ≈, −); fpdf2's built-in fonts are Latin-1 only.
FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
FONTS = {("sans", ""): "DejaVuSans.ttf", ("sans", "B"): "DejaVuSans-Bold.ttf",
         ("sans", "I"): "DejaVuSans-Oblique.ttf", ("sans", "BI"): "DejaVuSans-BoldOblique.ttf"}
STYLES = {"h1": ("B", 15, 4.0), "h2": ("B", 12, 3.0), "h3": ("B", 10.5, 2.0), "p": ("", 9.5, 2.0),
          "caption": ("I", 8.5, 1.0), "table": ("", 7.5, 3.0)}  # (font style, size pt, space after mm)
MARGIN = 18  # mm
FIGURE_DPI = 170


class _Pdf(FPDF):
    def footer(self):
        self.set_y(-12)
        self.set_font("sans", "", 8)
        self.set_text_color(128)
        self.cell(0, 5, str(self.page_no()), align="C")
        self.set_text_color(0)


def _column_widths(table):
    """Relative column widths from the longest word and the text length of each column, so long
    text columns get room and short numeric ones do not waste it; every cell wraps within its width."""
    widths = []
    for i, name in enumerate(table.columns):
        cells = [name] + [r[i] for r in table.rows if i < len(r)]
        longest_word = max((len(w) for c in cells for w in str(c).split()), default=1)
        typical = max(len(str(c)) for c in cells)
        widths.append(max(longest_word, min(typical, 40), 4))
    return tuple(widths)


class PdfTypesetter:
    """Sets a `Doc` on A4 pages. `figure_png(name)` returns (PNG bytes, None) or (None, skip line)."""

    def __init__(self, title):
        self.pdf = _Pdf(format="A4", unit="mm")
        self.pdf.set_title(title)
        self.pdf.set_margins(MARGIN, MARGIN, MARGIN)
        self.pdf.set_auto_page_break(True, margin=MARGIN)
        for (family, style), name in FONTS.items():
            self.pdf.add_font(family, style, str(FONT_DIR / name))
        self.pdf.add_page()
        self.skipped = {}

    @property
    def width(self):
        return self.pdf.w - 2 * MARGIN

    def _room(self):
        return self.pdf.h - MARGIN - self.pdf.get_y()

    def text(self, text, style, indent=0.0):
        font, size, after = STYLES[style]
        self.pdf.set_font("sans", font, size)
        self.pdf.set_x(MARGIN + indent)
        self.pdf.multi_cell(self.width - indent, size * 0.45, text, new_x="LMARGIN", new_y="NEXT")
        self.pdf.ln(after)

    def heading(self, text, level):
        if level == "h1" and self.pdf.get_y() > MARGIN + 1 and self._room() < (self.pdf.h - 2 * MARGIN) / 3:
            self.pdf.add_page()  # a section starts on a fresh page rather than at a page's foot
        elif self._room() < 25:
            self.pdf.add_page()  # never a heading alone at the bottom
        self.pdf.ln(1.5)
        self.text(text, level)

    def bullets(self, items):
        font, size, after = STYLES["p"]
        self.pdf.set_font("sans", font, size)
        for item in items:
            self.pdf.set_x(MARGIN + 2)
            self.pdf.cell(4, size * 0.45, "\u2022")
            self.pdf.multi_cell(self.width - 6, size * 0.45, item, new_x="LMARGIN", new_y="NEXT")
            self.pdf.ln(0.6)
        self.pdf.ln(after)

    def table(self, table):
        if self._room() < 30:
            self.pdf.add_page()
        self.text(f"Table: {table.caption}", "caption")
        font, size, after = STYLES["table"]
        self.pdf.set_font("sans", font, size)
        with self.pdf.table(col_widths=_column_widths(table), width=self.width, line_height=size * 0.5,
                            text_align="RIGHT", headings_style=FontFace(emphasis="BOLD"), padding=0.8,
                            repeat_headings=1) as t:
            header = t.row()
            for c in table.columns:
                header.cell(str(c), align="CENTER")
            for r in table.rows:
                row = t.row()
                for i in range(len(table.columns)):
                    cell = str(r[i]) if i < len(r) else ""
                    # text cells read better left-aligned, numbers right-aligned
                    row.cell(cell, align="LEFT" if i == 0 or not _numeric(cell) else "RIGHT")
        self.pdf.ln(after)

    def figure(self, png):
        from PIL import Image  # matplotlib's own dependency

        with Image.open(io.BytesIO(png)) as im:
            w_px, h_px = im.size
        width = self.width
        height = width * h_px / w_px
        limit = self.pdf.h - 2 * MARGIN - 10
        if height > limit:
            width, height = width * limit / height, limit
        if self._room() < height:
            self.pdf.add_page()
        self.pdf.image(io.BytesIO(png), x=MARGIN + (self.width - width) / 2, w=width, h=height)
        self.pdf.ln(3)

    def render(self, doc, figure_png):
        for kind, x in doc.blocks:
            if kind in ("h1", "h2", "h3"):
                self.heading(x, kind)
            elif kind == "p":
                self.text(x, "p")
            elif kind == "bullets":
                self.bullets(x)
            elif kind == "table":
                self.table(x)
            elif kind == "figure":
                png, skip = figure_png(x)
                if skip:
                    self.skipped[x] = skip
                    self.text(f"Figure {x} {skip}", "caption")
                else:
                    self.figure(png)
            elif kind == "page":
                if self.pdf.get_y() > MARGIN + 1:
                    self.pdf.add_page()
        return self

    def write(self, file):
        """Write the PDF into a binary file object; return the number of pages."""
        file.write(bytes(self.pdf.output()))
        return self.pdf.pages_count


def _numeric(cell):
    s = cell.replace(",", "").replace("%", "").replace("M", "").strip()
    try:
        float(s)
        return True
    except ValueError:
        return s in ("n/a", "")


def render_pdf(doc, file, figure_png, title):
    """Typeset `doc` into `file` (a binary file object); return (pages, {figure: skip line})."""
    setter = PdfTypesetter(title).render(doc, figure_png)
    return setter.write(file), setter.skipped
