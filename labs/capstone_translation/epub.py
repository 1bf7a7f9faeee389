"""`<name>_zh.epub`: the translated document as an e-book, built with ebooklib.

Why an EPUB: the translation project's readers read on e-readers and phones, where a text file
loses its paragraphs and a Markdown table is unreadable. One chapter per document, one `<p>` per
source paragraph, language `zh`; a partial document's untranslated paragraphs keep their Japanese,
marked with the same flag as the bilingual file, so an e-book never hides a gap.

The identifier is derived from the document's name and text, so rebuilding an unchanged
translation gives the same book identity (readers keep their place) and a changed one a new one.
"""

from __future__ import annotations

import hashlib
import html
import os
from pathlib import Path

LANGUAGE = "zh"
STYLE = "p { text-indent: 2em; margin: 0 0 0.6em 0; } p.untranslated { color: #a00; text-indent: 0; }"


def chapter_html(title: str, translations: list[str], unresolved: dict[int, str] | None = None,
                 flag: str = "NOT TRANSLATED") -> str:
    """The chapter's body: a heading, then one paragraph per source paragraph (escaped)."""
    unresolved = unresolved or {}
    paragraphs = []
    for i, text in enumerate(translations):
        body = "<br/>".join(html.escape(line) for line in text.split("\n"))
        if i in unresolved:
            note = html.escape(f"{flag}: {unresolved[i]}")
            paragraphs.append(f'<p class="untranslated"><strong>{note}</strong><br/>{body}</p>')
        else:
            paragraphs.append(f"<p>{body}</p>")
    return f"<h1>{html.escape(title)}</h1>\n" + "\n".join(paragraphs)


def write_epub(path: Path, title: str, translations: list[str], unresolved: dict[int, str] | None = None,
               flag: str = "NOT TRANSLATED") -> Path:
    """Write the translation as an EPUB 3 file, atomically (a killed run leaves no half book).

    Args:
        path: the `.epub` file to write.
        title: the book's title (the source file's name).
        translations: one per source paragraph (an unresolved one is its Japanese source).
        unresolved: paragraph index -> why it has no translation; flagged in the book.
        flag: the words that flag it (the bilingual file's, `outputs.UNTRANSLATED_FLAG`).

    Returns:
        `path`.
    """
    from ebooklib import epub

    book = epub.EpubBook()
    digest = hashlib.sha256("\n\n".join([title, *translations]).encode("utf-8")).hexdigest()[:32]
    book.set_identifier(f"urn:workbook-translation:{digest}")
    book.set_title(title)
    book.set_language(LANGUAGE)
    style = epub.EpubItem(uid="style", file_name="style.css", media_type="text/css", content=STYLE)
    book.add_item(style)
    chapter = epub.EpubHtml(title=title, file_name="translation.xhtml", lang=LANGUAGE)
    chapter.content = chapter_html(title, translations, unresolved, flag)
    chapter.add_item(style)
    book.add_item(chapter)
    book.toc = [chapter]
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", chapter]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    epub.write_epub(str(tmp), book)
    os.replace(tmp, path)
    return path


def read_epub_paragraphs(path: Path) -> list[str]:
    """The text of every `<p>` of the book, in order (for checks and tests)."""
    import re

    from ebooklib import ITEM_DOCUMENT, epub

    book = epub.read_epub(str(path))
    found: list[str] = []
    for item in book.get_items_of_type(ITEM_DOCUMENT):
        if item.get_name() != "translation.xhtml":
            continue
        body = item.get_content().decode("utf-8")
        for block in re.findall(r"<p[^>]*>(.*?)</p>", body, flags=re.S):
            text = re.sub(r"<br\s*/?>", "\n", block)
            found.append(html.unescape(re.sub(r"<[^>]+>", "", text)))
    return found
