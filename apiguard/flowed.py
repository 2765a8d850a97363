"""Plain text as the sender wrote it: RFC 3676 `format=flowed` unwrapped, and
hard-wrapped paragraphs joined for the patient identity search.

Thunderbird (and most mail software after it) sends plain text as
`format=flowed`: a long line is cut at a space and the line before the cut
keeps a trailing space (a *soft* line break); with `DelSp=yes` the cut may
fall anywhere and that space is not the sender's. A line that starts with a
space, "From " or ">" is *space-stuffed* (one space added), and ">" at the
start of a line are quote marks. Rules read the paragraphs the sender typed,
not the wrapping, so the parser unwraps flowed text before any rule or the
fingerprint sees it.
"""

from __future__ import annotations

# The signature separator "-- " is never a soft line break (RFC 3676 4.3).
_SIGNATURE_SEPARATOR = "-- "


def unflow(text: str, *, delsp: bool) -> str:
    """Unwrap `format=flowed` text (line ends already LF): soft line breaks
    joined, space-stuffing removed, quote depth kept ("> " per level)."""
    out: list[str] = []
    paragraph: list[str] = []
    paragraph_depth = -1
    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        if content.startswith(" "):
            content = content[1:]  # space-stuffing (after any quote marks)
        soft = content.endswith(" ") and content != _SIGNATURE_SEPARATOR
        if paragraph and depth != paragraph_depth:
            # A soft break never continues into another quote depth (4.5).
            out.append(_quoted(paragraph_depth, "".join(paragraph)))
            paragraph = []
        paragraph_depth = depth
        paragraph.append(content[:-1] if soft and delsp else content)
        if not soft:
            out.append(_quoted(depth, "".join(paragraph)))
            paragraph = []
    if paragraph:
        out.append(_quoted(paragraph_depth, "".join(paragraph)))
    return "\n".join(out)


def _quoted(depth: int, content: str) -> str:
    return f"{'>' * depth} {content}" if depth else content


def join_hard_wraps(text: str) -> str:
    """The text with each paragraph on one line: a line break followed by a
    non-blank line becomes a space (quote marks of the following line
    dropped); blank lines still separate paragraphs. Linear in the text."""
    out: list[str] = []
    paragraph: list[str] = []
    for line in text.split("\n"):
        content = line.lstrip(" \t>")
        if paragraph and content:
            paragraph[-1] = paragraph[-1].rstrip(" \t")
            paragraph.append(content)
            continue
        if paragraph:
            out.append(" ".join(paragraph))
        paragraph = [line] if content else []
        if not content:
            out.append(line)
    if paragraph:
        out.append(" ".join(paragraph))
    return "\n".join(out)
